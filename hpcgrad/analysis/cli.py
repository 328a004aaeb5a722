"""``hpcgrad analyze {summary,compare,plot,export,project}``: offline analysis of traffic logs.

Registered by ``hpcgrad/cli.py`` through :func:`register`; runs without ``mpiexec`` and never
imports MPI.  pandas and matplotlib are imported when a command runs, not when the parser is
built.  Every bad input (missing, truncated, corrupt or foreign file, unknown format version,
a log with no steps, bad units) ends with ``hpcgrad analyze: error: ...`` on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import sys
import time

TIMING_HELP = ("how to read the measured communication time per step from the phase times: "
               "worker-min (default) = the last worker to arrive's gather + bcast minus the "
               "server's aggregate; worker-median = median over workers; exchange = rank 0's "
               "gather + bcast minus its estimated wait for the last worker; server = rank 0's "
               "gather + bcast, waiting included (docs/analysis.md)")


def register(subparsers) -> None:
    """Add the ``analyze`` command and its subcommands to ``hpcgrad``'s parser."""
    p = subparsers.add_parser(
        "analyze", help="summaries, comparisons, plots and network projections from HDF5 logs "
                        "(no mpiexec needed)",
        description="Offline analysis of hpcgrad traffic logs (finished, live or killed runs). "
                    "The logs of the parts of a resumed run (--resume; they share a run_id) "
                    "given together are read as one run, stitched by step: a later part "
                    "replaces an earlier part's steps from its first step on. "
                    "See docs/analysis.md.")
    sub = p.add_subparsers(dest="analyze_command", required=True, metavar="ANALYSIS")

    s = sub.add_parser("summary", help="one row of figures per run",
                       description="Per run: algorithm, workers, parameters, steps, MB up/down "
                                   "per worker, bits per parameter per step, compression vs "
                                   "fp32, mean ms per phase, measured communication per step, "
                                   "final loss/accuracy.")
    s.add_argument("runs", nargs="+", metavar="RUN.h5")
    _output_options(s)
    s.add_argument("--follow", nargs="?", type=float, const=2.0, metavar="SECONDS",
                   help="reprint every SECONDS (default 2) while the runs are still writing "
                        "their logs; stops when every run has logged all its steps (Ctrl-C to "
                        "stop earlier)")
    s.set_defaults(analyze_func=cmd_summary)

    c = sub.add_parser("compare", help="the summary's figures as ratios against the first run",
                       description="Ratios of every figure of the summary to the first run's. "
                                   "Runs of different algorithms may be mixed; figures that do "
                                   "not apply to a run show n/a, with a note saying why.")
    c.add_argument("runs", nargs="+", metavar="RUN.h5", help="the first run is the reference")
    _output_options(c)
    c.set_defaults(analyze_func=cmd_compare)

    pl = sub.add_parser("plot", help="PNG figures of one or several runs",
                        description="Writes bytes_per_step.png, cumulative_bytes_loss.png, "
                                    "cumulative_bytes_accuracy.png, phase_times.png and, when "
                                    "a log has per-step K/nnz/union/bits datasets, "
                                    "step_sizes.png into DIR (runs overlaid).")
    pl.add_argument("runs", nargs="+", metavar="RUN.h5")
    pl.add_argument("-o", "--output", required=True, metavar="DIR", help="directory for the PNGs")
    pl.set_defaults(analyze_func=cmd_plot)

    e = sub.add_parser("export", help="write a log's tables as CSV files",
                       description="Writes steps.csv, worker_steps.csv, phase_times.csv, "
                                   "evals.csv and meta.csv into DIR.")
    e.add_argument("run", nargs="+", metavar="RUN.h5",
                   help="a log, or the logs of the parts of one resumed run (stitched by step)")
    e.add_argument("--csv", required=True, metavar="DIR", help="directory for the CSV files")
    e.set_defaults(analyze_func=cmd_export)

    pr = sub.add_parser(
        "project", help="predicted communication time per step at other sizes and networks",
        description="Alpha-beta model of Gather + Bcast (parameter server) or Allreduce, priced "
                    "on the message sizes logged in RUN.h5. Either give the network "
                    "(--bandwidth, --latency), or fit alpha and beta to the measured times of "
                    "runs at several world sizes (--fit; sharded, serverless and hierarchical "
                    "runs are read as such from their logs) and check the fit on held-out runs "
                    "(--holdout). --recommend prices the flat, sharded, serverless and "
                    "hierarchical exchanges of M workers on n nodes with intra- and inter-node "
                    "links and names the fastest. Formulas: docs/analysis.md.")
    pr.add_argument("run", nargs="?", metavar="RUN.h5",
                    help="whose message sizes to price (default: the first --holdout or --fit run)")
    pr.add_argument("--workers", "-P", nargs="+", type=int, metavar="P",
                    help="worker counts to project to (world size P + 1 for the parameter "
                         "server, P for allreduce); with --recommend, M: one table per value")
    pr.add_argument("--bandwidth", "-B", metavar="B",
                    help="link bandwidth, e.g. 100Gb/s, 12.5GB/s; a bare number is Gb/s")
    pr.add_argument("--latency", "-L", metavar="L",
                    help="per-message latency alpha, e.g. 2us, 0.01ms; a bare number is µs "
                         "(default 1us with --bandwidth)")
    pr.add_argument("--reduce-rate", metavar="R",
                    help="Allreduce's local reduction speed (gamma = 1/R), e.g. 10GB/s; default: "
                         "not counted (gamma = 0)")
    pr.add_argument("--topology", choices=("ps", "allreduce"),
                    help="ps = Gather + Bcast of the logged messages; allreduce = one Allreduce "
                         "(of the logged buffer for an allreduce log, else of the fp32 gradient, "
                         "4d bytes). Default: the run's own")
    pr.add_argument("--fit", nargs="+", metavar="RUN.h5",
                    help="fit alpha and beta (and gamma when separable; inter-node alpha and "
                         "beta from runs spanning hosts) to these runs' measured communication "
                         "time per step (runs at several world sizes); a .json file is a "
                         "'hpcgrad bench exchange --json' result, one point per algorithm")
    pr.add_argument("--holdout", nargs="+", metavar="RUN.h5",
                    help="runs not used in the fit: print the fit's prediction against their "
                         "measured time and the relative error")
    pr.add_argument("--timing", choices=("worker-min", "worker-median", "exchange", "server"),
                    default="worker-min", help=TIMING_HELP)
    pr.add_argument("--skip", type=int, default=5, metavar="N",
                    help="leave out the first N steps of each run (start-up) (default 5)")
    pr.add_argument("--statistic", choices=("mean", "median"), default="mean",
                    help="measured time per step of a run: mean (default) or median over its "
                         "steps (robust to steps slowed by other load on a shared machine)")
    rec = pr.add_argument_group(
        "recommend", "--recommend: every topology's predicted exchange time per step for M "
                     "workers (--workers) on n nodes, the fastest named. Message sizes: "
                     "--algorithm with --params, or --uplink-bytes/--downlink-bytes, or RUN.h5's")
    rec.add_argument("--recommend", action="store_true",
                     help="price flat, sharded (each --servers S), serverless, hierarchical "
                          "(forwarding; combining vote counts for signum-mv or --combine) and "
                          "the fp32 Allreduce for reference; name the fastest")
    nodes = rec.add_mutually_exclusive_group()
    nodes.add_argument("--nodes", "-n", type=int, metavar="N",
                       help="nodes the workers are spread over (default 1)")
    nodes.add_argument("--workers-per-node", type=int, metavar="K",
                       help="instead of --nodes: K workers per node, n = ceil(M/K) for each M")
    rec.add_argument("--intra-bandwidth", metavar="B",
                     help="a link within a node (shared memory, NVLink), e.g. 200GB/s")
    rec.add_argument("--inter-bandwidth", metavar="B",
                     help="a node's network link, shared by its ranks, e.g. 100Gb/s (needed "
                          "when n > 1)")
    rec.add_argument("--intra-latency", metavar="L", help="alpha within a node (default "
                     "--latency, or 1us)")
    rec.add_argument("--inter-latency", metavar="L", help="alpha between nodes (default "
                     "--latency, or 1us)")
    rec.add_argument("--algorithm", "-a", metavar="NAME",
                     help="size the messages as this algorithm's (signum-mv, s3gd-mv, fp32-ps, "
                          "fp16-ps) for --params d coordinates")
    rec.add_argument("--params", "-d", metavar="D",
                     help="model parameters d, e.g. 25.6M (for --algorithm, --combine and the "
                          "fp32 Allreduce reference)")
    rec.add_argument("--sparsity", type=float, default=0.01, metavar="S",
                     help="s3gd-mv's fraction of coordinates sent (default 0.01)")
    rec.add_argument("--uplink-bytes", metavar="U",
                     help="one worker's whole uplink message, e.g. 3.2MB (instead of --algorithm)")
    rec.add_argument("--downlink-bytes", metavar="V", help="the downlink message (default U)")
    rec.add_argument("--servers", "-S", nargs="+", type=int, default=[2, 4, 8], metavar="S",
                     help="shard counts to price for the sharded exchange (default 2 4 8)")
    rec.add_argument("--combine", action="store_true",
                     help="also price hierarchical combining (sign votes as per-node counts); "
                          "on by default for signum-mv")
    rec.add_argument("--json", action="store_true", help="print the tables as JSON")
    pr.set_defaults(analyze_func=cmd_project)

    p.set_defaults(func=run)


def _output_options(p) -> None:
    p.add_argument("--format", choices=("text", "csv", "json"), default="text",
                   help="text (default: one column per run, figures down the side), csv or "
                        "json (one row / object per run)")
    p.add_argument("--rows", action="store_true",
                   help="text: one row per run instead of one column per run")
    p.add_argument("--timing", choices=("worker-min", "worker-median", "exchange", "server"),
                   default="worker-min", help=TIMING_HELP)


def run(args) -> int:
    """Entry point of ``hpcgrad analyze``: the subcommand, with errors turned into messages."""
    from ..errors import HpcgradError
    try:
        return args.analyze_func(args)
    except (HpcgradError, ValueError) as exc:
        print(f"hpcgrad analyze: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except BrokenPipeError:  # output piped into e.g. head, which stopped reading
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 0
    except OSError as exc:  # e.g. an output directory that cannot be written
        print(f"hpcgrad analyze: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130


# The subcommands' set_defaults(analyze_func=...) above point at these; ``run`` calls them.

def _render(table, args, notes=()) -> str:
    from . import summary
    if args.format == "csv":
        return table.to_csv(index=False).rstrip("\n")
    if args.format == "json":
        return table.to_json(orient="records", indent=1)
    text = summary.format_table(table, transpose=not args.rows)
    if notes:
        text += "\n\nnotes:\n" + "\n".join(f"  * {n}" for n in notes)
    return text


def _part_notes(logs) -> list[str]:
    """What a reader of the figures must know about resumed runs: a part given alone covers
    only its steps; a stitched run may lack the steps of a part not given."""
    from .reader import StitchedRun
    notes = []
    for log in logs:
        if isinstance(log, StitchedRun):
            missing = log.missing_steps()
            if missing:
                notes.append(f"{log.name}: {missing} steps are in none of the parts given "
                             "(a part missing?)")
        elif log.first_step:
            previous = log.meta.get("previous_log")
            notes.append(f"{log.name} is a resumed run's part from step {log.first_step}: its "
                         "figures cover its own steps; give the earlier parts' logs too"
                         + (f" (previous: {previous})" if previous else "")
                         + " for the whole run")
    return notes


def cmd_summary(args) -> int:
    from . import reader, summary
    logs = reader.open_runs(args.runs)
    try:
        if args.follow is None:
            notes = _part_notes(logs)
            print(_render(summary.summary_table(logs, args.timing), args,
                          notes if args.format == "text" else ()))
            if args.format != "text":
                for note in notes:
                    print(f"note: {note}", file=sys.stderr)
            return 0
        return _follow(logs, args)
    finally:
        for log in logs:
            log.close()


def _follow(logs, args, max_updates=None) -> int:
    from . import summary
    interval = max(0.05, float(args.follow))
    tty = sys.stdout.isatty()
    updates = 0
    while True:
        ready, waiting = [], []
        for log in logs:
            log.refresh()
            (ready if log.n else waiting).append(log)
        lines = [f"hpcgrad analyze summary --follow: {time.strftime('%H:%M:%S')}, "
                 + ", ".join(f"{log.name} {log.n}/{log.iterations_requested} steps"
                             for log in logs)]
        if ready:
            lines.append(_render(summary.summary_table(ready, args.timing), args))
        for log in waiting:
            lines.append(f"{log.path}: no steps logged yet")
        if tty:
            sys.stdout.write("\x1b[2J\x1b[H")
        print("\n".join(lines) + ("" if tty else "\n"), flush=True)
        updates += 1
        if all(log.complete for log in logs):
            return 0
        if max_updates is not None and updates >= max_updates:
            return 0
        time.sleep(interval)


def cmd_compare(args) -> int:
    from . import reader, summary
    logs = reader.open_runs(args.runs)
    try:
        table, notes = summary.compare_table(logs, args.timing)
        notes = _part_notes(logs) + notes
        if args.format == "text":
            ref = logs[0]
            head = f"ratios against {ref.name} ({ref.algorithm}, {ref.num_workers} workers)"
            print(head + "\n" + _render(table, args, notes))
        else:
            print(_render(table, args))
            for note in notes:
                print(f"note: {note}", file=sys.stderr)
        return 0
    finally:
        for log in logs:
            log.close()


def cmd_plot(args) -> int:
    from . import plots, reader
    logs = reader.open_runs(args.runs)
    try:
        for log in logs:
            if log.n == 0 and len(logs) == 1:
                log.require_steps()
        written, notes = plots.plot_all(logs, args.output)
    finally:
        for log in logs:
            log.close()
    if not written:
        raise ValueError("nothing to plot: " + "; ".join(notes))
    for path in written:
        print(f"wrote {path}")
    for note in notes:
        print(f"note: {note}")
    return 0


def cmd_export(args) -> int:
    from pathlib import Path

    from . import reader
    out = Path(args.csv)
    runs = reader.open_runs(args.run)
    if len(runs) > 1:
        for run in runs:
            run.close()
        raise ValueError(f"export writes one run; the {len(args.run)} logs given are "
                         f"{len(runs)} runs (only the parts of one resumed run, sharing its "
                         "run_id, are exported together)")
    with runs[0] as log:
        tables = {"steps": log.steps(), "worker_steps": log.worker_steps(),
                  "phase_times": log.phase_times(), "evals": log.evals(),
                  "meta": log.meta_frame()}
        out.mkdir(parents=True, exist_ok=True)
        for name, table in tables.items():
            path = out / f"{name}.csv"
            table.to_csv(path, index=False)
            print(f"wrote {path} ({len(table)} rows)")
        if log.n == 0:
            print(f"note: {log.path} has no steps logged: the step tables are empty")
    return 0


# ---------------------------------------------------------------------- project

def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def cmd_project(args) -> int:
    from . import projection as P
    from . import reader

    if args.recommend:
        return cmd_recommend(args)
    if args.json:
        raise ValueError("--json goes with --recommend")
    if args.fit is None and args.run is None:
        raise ValueError("give RUN.h5 (with --bandwidth) or --fit RUNS...")
    if args.fit is None and args.bandwidth is None:
        raise ValueError("give the network (--bandwidth, and --latency) or fit it to runs (--fit)")
    if args.holdout and not args.fit:
        raise ValueError("--holdout needs --fit")
    if args.workers and any(w < 1 for w in args.workers):
        raise ValueError("--workers must be at least 1")
    out = []
    model = None
    if args.fit:
        model = _fit_and_check(args, out)
    else:
        latency = P.parse_latency(args.latency) if args.latency is not None else 1e-6
        gamma = 1.0 / P.parse_bandwidth(args.reduce_rate) if args.reduce_rate else 0.0
        model = P.CostModel(latency, 1.0 / P.parse_bandwidth(args.bandwidth), gamma)
        out.append(f"network: alpha = {model.alpha * 1e6:.3g} us, bandwidth = "
                   f"{model.bandwidth * 8 / 1e9:.4g} Gb/s (beta = {model.beta:.4g} s/B), "
                   f"gamma = {model.gamma:.4g} s/B")
    path = args.run or next((str(p) for p in [*(args.holdout or []), *(args.fit or [])]
                             if not str(p).endswith(".json")), None)
    if path is None:  # benchmark results only: the fit is the answer
        if args.workers:
            raise ValueError("--workers projects a log's message sizes: give RUN.h5 (or use "
                             "--recommend)")
        print("\n".join(out))
        return 0
    with reader.open_log(path) as log:
        _project_run(args, log, model, out)
    print("\n".join(out))
    return 0


def _points(paths, args) -> list:
    """Fit points of logs (read as :func:`projection.point`) and of ``hpcgrad bench exchange
    --json`` files (``.json``: one point per algorithm in it)."""
    from . import projection as P
    from . import reader

    points = []
    logs = [p for p in paths if not str(p).endswith(".json")]
    for path in paths:
        if str(path).endswith(".json"):
            points += P.bench_points(path)
    if logs:
        runs = reader.open_runs(logs)
        try:
            points += [P.point(log, args.timing, args.skip, args.statistic) for log in runs]
        finally:
            for log in runs:
                log.close()
    return points


def _fit_and_check(args, out):
    from . import projection as P

    points = _points(args.fit, args)
    if len({(pt[1], pt[2], round(pt[3]), round(pt[4])) for pt in points}) < 2:
        raise ValueError("--fit needs runs at two different world sizes (or message sizes) at "
                         "least")
    result = P.fit(points)
    args.fitted_network = result.network
    m = result.model
    out.append(f"fit of {', '.join(result.fitted)} to {len(points)} runs (measured: "
               f"{args.timing} timing, {args.statistic} per step after the first {args.skip} "
               "steps; "
               f"least squares on relative error, parameters >= 0):")
    out.append(f"  alpha = {m.alpha * 1e6:.4g} us, beta = {m.beta:.4g} s/B "
               f"(bandwidth {m.bandwidth / 1e9:.4g} GB/s = {m.bandwidth * 8 / 1e9:.4g} Gb/s), "
               f"gamma = {m.gamma:.4g} s/B")
    if "beta_inter" in result.fitted or "alpha_inter" in result.fitted:
        e = result.network.inter
        out.append(f"  inter-node: alpha = {e.alpha * 1e6:.4g} us, beta = {e.beta:.4g} s/B "
                   f"(bandwidth {e.bandwidth * 8 / 1e9:.4g} Gb/s)")
    if result.note:
        out.append(f"  note: {result.note}")
    out.append("")
    rows = [("fit", *r) for r in result.rows]
    for pt in _points(args.holdout or [], args):
        rows.append(("held out", pt.name, pt.topology, pt.p, pt.measured,
                     P.predict(pt, result.network)))
    width = max(9, *(len(r[2]) for r in rows))
    out.append(f"  {'':9} {'run':28} {'topology':{width}} {'ranks':>5} {'measured ms':>12} "
               f"{'predicted ms':>13} {'error':>8}")
    for kind, name, topo, p, meas, pred in rows:
        err = (pred - meas) / meas
        out.append(f"  {kind:9} {name[:28]:28} {topo:{width}} {p:5d} {_ms(meas):>12} "
                   f"{_ms(pred):>13} {err:+8.1%}")
    groups = {}
    for kind, name, topo, p, meas, pred in rows:
        if kind == "held out":
            groups.setdefault((topo, p), []).append((meas, pred))
    for (topo, p), pairs in groups.items():
        if len(pairs) > 1:
            meas = sum(a for a, _ in pairs) / len(pairs)
            pred = sum(b for _, b in pairs) / len(pairs)
            out.append(f"  {'held out':9} {f'mean of {len(pairs)} runs':28} {topo:{width}} "
                       f"{p:5d} {_ms(meas):>12} {_ms(pred):>13} {(pred - meas) / meas:+8.1%}")
    out.append("")
    return m


def _project_run(args, log, model, out) -> None:
    from . import projection as P

    up, down = P.message_sizes(log)
    topology = args.topology or log.topology
    d = log.num_params
    fp32 = 4.0 * d
    if topology == "allreduce" and log.topology != "allreduce":
        up = down = fp32
        what = f"Allreduce of the fp32 gradient (4d = {fp32:,.0f} B; the log's messages " \
               f"are {log.algorithm}'s and cannot be summed by MPI)"
    elif topology == "allreduce":
        what = f"Allreduce of the logged buffer ({up:,.0f} B; its time is logged as gather)"
    else:
        what = (f"Gather of {up:,.0f} B per worker + Bcast of {down:,.0f} B "
                f"(mean logged sizes per step)")
    p_own = log.world_size
    measured = P.mean_comm_time(log, args.timing, args.skip, args.statistic)
    own = P.step_time(topology, p_own, up, down, model)["total"]
    out.append(f"{log.path}: {log.algorithm}, {log.num_workers} workers, d = {d:,}; "
               f"projected topology: {topology}: {what}")
    if topology == log.topology:
        out.append(f"  measured at its own size ({p_own} ranks): {_ms(measured)} ms/step "
                   f"communication ({args.timing} timing); the model gives {_ms(own)} ms")
    else:
        out.append(f"  measured at its own size ({p_own} ranks, {log.topology}): "
                   f"{_ms(measured)} ms/step; not comparable with the projected topology")
    if not args.workers:
        return
    header = f"  {'workers':>7} {'ranks':>6} {'predicted ms/step':>18}"
    show_ref = not (topology == "allreduce" and up == fp32)
    if show_ref:
        header += f" {'fp32 Allreduce ms':>18} {'ratio':>7}"
    out.append(header)
    for w in args.workers:
        ranks = w + 1 if topology == "ps" else w
        pred = P.step_time(topology, ranks, up, down, model)
        line = f"  {w:7d} {ranks:6d} {_ms(pred['total']):>18}"
        if show_ref:
            ref = P.step_time("allreduce", w, fp32, fp32, model)["total"]
            line += f" {_ms(ref):>18} {pred['total'] / ref:7.3f}"
        out.append(line)
    if show_ref:
        out.append("  (fp32 Allreduce = the data-parallel baseline of the same model, 4d bytes, "
                   "among the workers; ratio < 1: this run's scheme is faster)")


# ---------------------------------------------------------------------- project --recommend

def _recommend_network(args, multi_node: bool):
    """The two link classes from the flags (a fit's, where ``--fit`` gave one)."""
    from . import projection as P

    fitted = None
    if args.fit:
        _fit_and_check(args, args.fit_lines)
        fitted = args.fitted_network
    default_latency = P.parse_latency(args.latency) if args.latency is not None else 1e-6

    def link(bandwidth, latency, flag, fallback):
        if bandwidth is None:
            if fallback is not None:
                return fallback
            raise ValueError(f"--recommend needs {flag} (or --fit runs)")
        alpha = P.parse_latency(latency) if latency is not None else default_latency
        return P.CostModel(alpha, 1.0 / P.parse_bandwidth(bandwidth))

    intra = link(args.intra_bandwidth or args.bandwidth, args.intra_latency, "--intra-bandwidth",
                 fitted.intra if fitted else None)
    if multi_node:
        inter = link(args.inter_bandwidth, args.inter_latency,
                     "--inter-bandwidth for more than one node",
                     fitted.inter if fitted and fitted.inter is not fitted.intra else None)
        if inter.beta < intra.beta:
            raise ValueError(f"--inter-bandwidth {args.inter_bandwidth} is faster than the "
                             "intra-node link: the model takes a node's own links as the fast "
                             "ones (swap them?)")
    else:
        inter = intra
    gamma = 1.0 / P.parse_bandwidth(args.reduce_rate) if args.reduce_rate else 0.0
    return P.Network(intra, inter, gamma)


def _recommend_sizes(args):
    """(uplink, downlink, d, what): numbers or callables of M, and where they come from."""
    from . import projection as P
    from . import reader

    params = int(P.parse_count(args.params, "--params")) if args.params is not None else 0
    if args.params is not None and params < 1:
        raise ValueError(f"--params must be at least 1, got {args.params}")
    if args.algorithm and (args.uplink_bytes or args.downlink_bytes):
        raise ValueError("give --algorithm or --uplink-bytes/--downlink-bytes, not both")
    if args.algorithm:
        if not params:
            raise ValueError(f"--algorithm {args.algorithm} needs --params d (e.g. 25.6M)")
        P.algorithm_bytes(args.algorithm, params, 2, args.sparsity)  # checks the name
        exact = args.algorithm != "s3gd-mv"
        what = (f"{args.algorithm}, d = {params:,}: messages "
                + ("exact (fixed-size codec)" if exact else
                   f"estimated (sparsity {args.sparsity:g}; the downlink, the union of the "
                   "workers' supports, grows with M)"))
        return (lambda m: P.algorithm_bytes(args.algorithm, params, m, args.sparsity)[0],
                lambda m: P.algorithm_bytes(args.algorithm, params, m, args.sparsity)[1],
                params, args.algorithm, what)
    if args.uplink_bytes:
        up = P.parse_bytes(args.uplink_bytes)
        down = P.parse_bytes(args.downlink_bytes) if args.downlink_bytes else up
        return up, down, params, None, f"uplink {up:,.0f} B, downlink {down:,.0f} B (given)"
    if args.downlink_bytes:
        raise ValueError("--downlink-bytes needs --uplink-bytes")
    if args.run:
        with reader.open_log(args.run) as log:
            up, down = P.message_sizes(log)
            d, algorithm = params or log.num_params, log.algorithm
        return up, down, d, algorithm, (f"{algorithm}, d = {d:,}: uplink {up:,.0f} B, downlink "
                                        f"{down:,.0f} B (mean logged sizes of {args.run})")
    raise ValueError("--recommend needs message sizes: --algorithm NAME --params D, or "
                     "--uplink-bytes U [--downlink-bytes V], or RUN.h5")


def cmd_recommend(args) -> int:
    import json
    import math

    from . import projection as P

    if not args.workers:
        raise ValueError("--recommend needs --workers M")
    if any(w < 1 for w in args.workers):
        raise ValueError("--workers must be at least 1")
    if args.holdout and not args.fit:
        raise ValueError("--holdout needs --fit")
    if args.topology:
        raise ValueError("--topology does not go with --recommend (it prices every topology)")
    if any(s < 1 for s in args.servers):
        raise ValueError("--servers must be at least 1")
    cases = []
    for m in args.workers:
        if args.workers_per_node is not None:
            if args.workers_per_node < 1:
                raise ValueError("--workers-per-node must be at least 1")
            n = math.ceil(m / args.workers_per_node)
        else:
            n = 1 if args.nodes is None else args.nodes
            if n < 1:
                raise ValueError("--nodes must be at least 1")
            if n > m:
                raise ValueError(f"--nodes {n} exceeds --workers {m}: every node needs a worker")
        cases.append((m, n))
    up, down, d, algorithm, what = _recommend_sizes(args)
    args.fit_lines = []
    net = _recommend_network(args, any(n > 1 for _, n in cases))
    combine = args.combine or algorithm == "signum-mv"
    if combine and not d:
        raise ValueError("--combine needs --params d (the vote counts are per coordinate)")
    results = []
    for m, n in cases:
        layouts = P.candidate_layouts(m, n, args.servers, combine, d)
        r = P.recommend(layouts, up, down, net, reference=4.0 * d if d else None)
        flat = next(row for row in r["rows"] if row["kind"] == "flat")
        best = next(row for row in r["rows"] if row["topology"] == r["best"])
        r.update(workers=m, nodes=n, per_node=math.ceil(m / n),
                 speedup_vs_flat=flat["seconds"] / best["seconds"] if best["seconds"] else None)
        results.append(r)
    if args.json:
        print(json.dumps({"sizes": what, "network": _network_json(net), "cases": results},
                         indent=1))
        return 0
    out = args.fit_lines + [f"recommend: {what}",
                            f"network: {_network_text(net, any(n > 1 for _, n in cases))}"]
    for r in results:
        out += [""] + _recommend_table(r)
    out += ["", "(predicted by the alpha-beta model, not measured; docs/analysis.md has the "
                "equations\n and what each topology sends on which link)"]
    print("\n".join(out))
    return 0


def _network_json(net) -> dict:
    return {"intra": {"alpha_s": net.intra.alpha, "beta_s_per_byte": net.intra.beta},
            "inter": {"alpha_s": net.inter.alpha, "beta_s_per_byte": net.inter.beta},
            "gamma_s_per_byte": net.gamma}


def _network_text(net, multi_node: bool) -> str:
    def one(m):
        return f"{m.bandwidth * 8 / 1e9:.4g} Gb/s ({m.bandwidth / 1e9:.4g} GB/s), " \
               f"alpha {m.alpha * 1e6:.3g} us"
    text = f"intra-node {one(net.intra)}"
    return text + (f"; inter-node {one(net.inter)}" if multi_node else " (one node)")


def _recommend_table(r) -> list[str]:
    m, n, k = r["workers"], r["nodes"], r["per_node"]
    lines = [f"{m} workers on {n} node{'s' if n > 1 else ''} ({k} per node at most):",
             f"  {'topology':26} {'predicted ms':>13} {'x fastest':>10} {'up B/worker':>13} "
             f"{'down B':>13} {'intra MB':>10} {'inter MB':>10}"]
    best = min(row["seconds"] for row in r["rows"] if row["ranked"])
    for row in r["rows"]:
        links = row["link_bytes"]
        name = row["topology"] + ("" if row["ranked"] else " (ref.)")
        lines.append(f"  {name:26} {_ms(row['seconds']):>13} {row['seconds'] / best:10.2f} "
                     f"{row['uplink_bytes']:13,.0f} {row['downlink_bytes']:13,.0f} "
                     f"{links['intra'] / 1e6:10.2f} {links['inter'] / 1e6:10.2f}")
    text = f"  fastest: {r['best']}"
    if r["runner_up"]:
        text += (f", {r['margin']:.2f}x faster than the runner-up {r['runner_up']}"
                 f" and {r['speedup_vs_flat']:.2f}x faster than flat")
    lines.append(text)
    lines.append("  (intra / inter MB: bytes per step on the busiest link of each class, summed "
                 "over the stages;\n   ref.: the fp32 Allreduce of the same d, uncompressed: "
                 "shown, not ranked)")
    return [ln for ln in lines if ln]
