"""Top-K with error feedback, and gradient selection rules that shrink the union U.

Worker, per parameter tensor l (a segment of the flat vector):
    r <- r + g                          residual (error feedback)
    P <- K_l positions chosen by the selection rule (below)
    send the values r[P] (fp32, or fp16 with ``--topk-values fp16``);
    r[P] <- r[P] - sent                 (0 for fp32; the fp16 rounding error stays)
Server:
    U = union of the workers' positions; a[i] = (sum_m value_m[i]) / M over U
    (float32, added in worker order; a worker that did not send i adds nothing)
    broadcast a over U as ``sparse-values`` with fp32 values
Every rank:
    scatter a into a dense float32 vector (0 off U), then ``MomentumSGD``.

K_l = ceil(sparsity * numel_l) (``--sparsity``, shared with s3gd-mv; ``k_by_fraction``,
with top-K's rule K = sum K_l < d; :mod:`hpcgrad.compression.selection`).  The residual r
is a :class:`hpcgrad.compression.feedback.Residual` (the memory ef-sgd uses).

Selection rules (``--topk-selection``), all with the residual.  Wang, Liu & Wu (ICNCC
2018; only the abstract is public) establish that the server's cost is |U| and propose
selecting so that U stays small; how is not in the abstract.  So only ``local`` is a
method from the literature (plain top-K); the others are ours (``docs/algorithms/topk.md``):

``local``
    the K_l entries of largest |r| (plain top-K, the baseline; ties in index order,
    exact zeros are never sent).
``union-boost``  (*our reading* of the paper's idea; the weighting is ours)
    score |r_i| * (1 + W * [i in U_prev]), W = ``--union-boost`` >= 0 (default 1):
    prefer the coordinates of the previous step's union, which every worker knows
    from the previous downlink.  W = 0 is ``local``.
``aggregate-hint``  (*our reading* of the paper's idea; the score is ours)
    score |r_i| + L * |a_prev,i|, L = ``--aggregate-hint`` >= 0 (default 1), with
    a_prev the previous step's broadcast aggregate.  L = 0 is ``local``.
``shared-random``  (*our invention*: not in Wang, Liu & Wu's paper)
    every worker takes the same K_l positions, drawn from
    ``numpy.random.default_rng([seed, step, l])`` without replacement, so |U| = K
    exactly.  ``--unbiased``: values scaled by numel_l / K_l and no residual (r = g
    each step): rand-K's unbiased estimator.  (*our reading*: the paper does not say
    how scaling and error feedback combine; we do not combine them.)
``leader``  (*our invention*: not in Wang, Liu & Wu's paper, whose abstract says
    nothing of a worker choosing positions for the others)
    the leader of step t is worker 1 + t mod M.  It sends its own local top-K; every
    other worker sends its values at the positions the previous step's leader chose.
    The server marks which union entries came from the leader (a membership bitmap in
    the downlink, ``sparse-values`` flag bit 5), so every worker knows the positions
    to use at the next step.  At step 0 every worker uses its local top-K.  So
    |U| <= 2K instead of <= MK.

Step 0 of ``union-boost`` / ``aggregate-hint`` has no previous downlink: ``local``.

Seams: the rules above -- scores, shared positions, the leader's announcement and which
union entries it marks -- are this module's; coding entries into bodies and back is the
compressors' (:mod:`hpcgrad.compression.compressors`).  The uplink is
:class:`~hpcgrad.compression.compressors.TopKCompressor` (ef-sgd's ``--compressor topk``)
given this algorithm's K and value precision: it selects by the scores passed to it, or
sends at positions written into its ``positions`` (shared-random, leader), scaled for
``--unbiased``; the server reads the uplinks into merge rows with its ``decode_entries``.
The downlink is a :class:`~hpcgrad.compression.compressors.SparseValues` of up to
``min(d, M*K)`` fp32 entries, carrying the leader's membership bitmap.
"""

from __future__ import annotations

import numpy as np

from ..wire.codecs import SPARSE_VALUES
from ..errors import WireFormatError
from ..kernels import fused_feedback, sparse
from ..compression.compressors import SPARSITY, SparseValues, TopKCompressor
from ..compression.feedback import Residual, residual_of
from ..compression.on_device import ValueTopKStep, on_device
from ..compression.fused_selection import CompensatedTopK, ResidualUpdate
from ..compression.selection import k_by_fraction, require_k_below_d
from ..options import Option, fail
from .base import Algorithm, MomentumSGD
from .step import decode_into_rows

TOPK_SELECTIONS = ("local", "union-boost", "aggregate-hint", "shared-random", "leader")
TOPK_VALUES = ("fp32", "fp16")

TOPK_SELECTION = Option(
    "topk_selection", str, "local", choices=TOPK_SELECTIONS,
    help="how a worker picks its K positions: local = its largest |residual| (plain "
         "top-K); union-boost = prefer the previous step's union; aggregate-hint = "
         "|residual| + L*|previous aggregate| (both our reading of Wang et al.); "
         "shared-random = the same seeded positions on every worker (|U| = K); leader = a "
         "rotating worker's previous top-K for all (both our inventions, not the paper's); "
         "docs/algorithms/topk.md")
TOPK_VALUES_OPTION = Option("topk_values", str, "fp32", choices=TOPK_VALUES,
                            unknown="topk-values must be fp32 or fp16, got {value!r}",
                            help="uplink value precision (fp16: ours)")
UNION_BOOST = Option("union_boost", float, None, bounds=">= 0", metavar="W", default_help="1",
                     help="union-boost: score |r|*(1 + W) on the previous union, W >= 0",
                     strict=True)
AGGREGATE_HINT = Option("aggregate_hint", float, None, bounds=">= 0", metavar="L",
                        default_help="1",
                        help="aggregate-hint: score |r| + L*|previous aggregate|, L >= 0",
                        strict=True)
UNBIASED = Option("unbiased", bool, False,
                  help="shared-random: scale the values by numel/K and keep no residual "
                       "(ours)",
                  strict=True)


class TopKEF(Algorithm):
    name = "topk"
    summary = "each worker's top-K values with error feedback, mean over the union"
    order = 30
    docs = "docs/algorithms/topk.md"
    options = (SPARSITY, TOPK_SELECTION, TOPK_VALUES_OPTION, UNION_BOOST, AGGREGATE_HINT,
               UNBIASED)
    hints = {"k_per_worker": "use --sparsity",
             "ef-sgd": "topk keeps its own gradient residual (error feedback)"}
    defaults = {"lr": 0.1, "momentum": 0.9, "sparsity": 0.01}
    uplink = downlink = SPARSE_VALUES
    variable_length = True
    step_fields = {"nnz_up": (True, np.int64), "nnz_down": (False, np.int64),
                   "union_size": (False, np.int64)}
    # The previous downlink (U_prev, a_prev, the leader's announcement) steers selection.
    state_names = ("residual", "sgd.buffer", "union_pos", "union_val", "union_nnz", "marked",
                   "announced", "announced_nnz", "aggregate")
    residual = residual_of("memory")

    def __init__(self, config, num_params, num_workers, segments=None):
        super().__init__(config, num_params, num_workers, segments)
        d, m = num_params, num_workers
        self.ks = require_k_below_d(k_by_fraction(self.segments, config.sparsity),
                                    self.segments, "topk", f"--sparsity {config.sparsity}")
        self.k_total = sum(self.ks)
        self.rule = config.topk_selection
        self.fp16 = config.topk_values == "fp16"
        self.weight = np.float32(1.0 if config.union_boost is None else config.union_boost)
        self.hint = np.float32(1.0 if config.aggregate_hint is None else config.aggregate_hint)
        self.unbiased = bool(config.unbiased)
        self.seed = config.seed
        self.up = TopKCompressor(config, self.segments, self.offsets, self.ks, self.fp16)
        if self.rule == "shared-random":
            self.shared_draws = sparse.SeededPositions(self.segments, self.offsets, self.ks)
        self.capacity = self.up.capacity  # entries of one uplink: K
        # Worker state: r (none for --unbiased: rand-K without memory), and the scores.
        self.memory = None if self.unbiased else Residual()
        self.score = None  # allocated on first use
        # Server: decoded uplinks and the merge.
        self._rows_pos = self._rows_val = None
        self._counts = np.zeros(m, dtype=np.int64)
        self._heads = np.zeros(m, dtype=np.int64)
        # Every rank: the decoded downlink (U_prev, a_prev), and the leader's announcement.
        down = min(d, m * self.capacity)
        self.down = SparseValues(config, self.segments, self.offsets, down)
        self.union_pos = np.zeros(down, dtype=np.int64)
        self.union_val = np.zeros(down, dtype=np.float32)
        self.marked = np.zeros(down, dtype=np.uint8)
        self.union_nnz = 0
        self.announced = np.zeros(self.capacity, dtype=np.int64)
        self.announced_nnz = -1  # -1: none yet (step 0)
        self.aggregate = np.zeros(d, dtype=np.float32)  # a_prev, dense
        self.sgd = MomentumSGD(d, config.lr, config.momentum, config.weight_decay)
        self.device_step = ValueTopKStep(self)  # CuPy gradients
        sparse.warm_up()

    @classmethod
    def check_settings(cls, cfg):
        for option, rule in ((UNION_BOOST, "union-boost"), (AGGREGATE_HINT, "aggregate-hint")):
            fail(getattr(cfg, option.name) is None or cfg.topk_selection == rule,
                 f"{option.key} is a weight of --algorithm topk --topk-selection {rule}; this "
                 f"run uses topk with --topk-selection {cfg.topk_selection}")
        fail(cfg.k_per_worker is None,
             "topk: --k-per-worker is an s3gd-mv setting; use --sparsity")
        fail(not cfg.unbiased or cfg.topk_selection == "shared-random",
             "unbiased scaling is an option of --algorithm topk --topk-selection shared-random")
        fail(cfg.sparsity is None or cfg.sparsity < 1,
             f"topk: sparsity {cfg.sparsity} selects every coordinate (K = d); top-K needs "
             "K < d, i.e. --sparsity below 1")

    def metadata(self) -> dict:
        return {"segments": self.segments, "k_per_segment": self.ks, "k": self.k_total,
                "topk_selection": self.rule, "uplink_capacity_entries": self.capacity}

    def leader(self, step: int) -> int:
        """The rank (1..M) whose top-K the other workers follow at the next step."""
        return 1 + step % self.num_workers

    # ---------------------------------------------------------------- worker
    def _shared_positions(self, step, rank):
        """Write the positions every worker shares into ``up.positions`` and return how
        many (shared-random; leader's followers), or None: this worker selects its own."""
        positions = self.up.positions
        if self.rule == "shared-random":
            return self.shared_draws.draw([self.seed, step], positions)
        if self.rule == "leader" and self.announced_nnz >= 0 and rank != self.leader(step):
            n = self.announced_nnz
            positions[:n] = self.announced[:n]
            return n
        return None

    def _scores(self, r, step):
        """What the top-K is taken of: ``r`` itself, or union-boost's / aggregate-hint's
        scores once a previous downlink is known."""
        if self.rule not in ("union-boost", "aggregate-hint") or step == 0:
            return r
        if self.score is None:
            self.score = np.empty_like(r)
        score = self.score
        np.abs(r, out=score)
        if self.rule == "union-boost":
            u = self.union_pos[: self.union_nnz]
            score[u] *= np.float32(1) + self.weight
        else:
            score += self.hint * np.abs(self.aggregate)
        return score

    #: Worker steps through the fused kernels (issue 19); False: the reference path, the
    #: same bytes (bench micro times both).
    fused = True
    #: Residual + exact selection in one pass (made on the first worker step that uses it).
    _fused = None

    def worker_step(self, ctx, grad, uplink):
        if on_device(grad):
            return self.device_step(ctx, grad, uplink)
        up = self.up
        own_scores = self.rule == "local" or (
            self.rule in ("union-boost", "aggregate-hint") and ctx.step == 0)
        if self.fused and own_scores and self.memory is not None \
                and isinstance(grad, np.ndarray):
            if self._fused is None:
                self._fused = CompensatedTopK(up.selector)
            nnz = self._fused.select(ResidualUpdate(self.memory, grad), up.positions,
                                     up._negative)
            up.send_at(self.memory.values, nnz, uplink)
            fused_feedback.subtract_at(self.memory.values, up.positions, up.values, up.nnz)
            return
        r = grad if self.memory is None else self.memory.compensate(grad)
        shared = self._shared_positions(ctx.step, ctx.rank)
        if shared is None:
            up.compress(ctx, r, uplink, scores=self._scores(r, ctx.step))
        else:
            up.send_at(r, shared, uplink, unbiased=self.unbiased)
        if self.memory is not None:  # 0 for fp32; the fp16 rounding error stays in r
            self.memory.subtract_at(up.positions[: up.nnz], up.values[: up.nnz])

    # ---------------------------------------------------------------- server
    def server_step(self, ctx, uplinks, downlink):
        m = self.num_workers
        if self._rows_pos is None:
            self._rows_pos = np.zeros((m, self.capacity), dtype=np.int64)
            self._rows_val = np.zeros((m, self.capacity), dtype=np.float32)
        decode_into_rows(uplinks, self.up.decode_entries, (self._rows_pos, self._rows_val),
                         self._counts)
        union = sparse.merge_sum(self._rows_pos, self._rows_val, self._counts, self._heads,
                                 np.float32(m), self.union_pos, self.union_val)
        marked = None
        if self.rule == "leader":
            w = self.leader(ctx.step) - 1
            marked = self.marked[:union]
            marked[...] = np.isin(self.union_pos[:union],
                                  self._rows_pos[w, : self._counts[w]])
        self.down.write_entries(self.union_pos, self.union_val, union, downlink, marked)
        self.step_stats = {"nnz_up": self._counts, "nnz_down": union, "union_size": union}

    # ---------------------------------------------------------- every rank
    def decode(self, ctx, downlink):
        """The dense aggregate (0 off the union U), and U, a and the leader's announcement
        kept for the next step's selection."""
        header, step = downlink.header, ctx.step
        marked = self.marked if self.rule == "leader" else None
        nnz = self.down.decode_entries(downlink.padded_body[: header.body_length], header,
                                       self.union_pos, self.union_val, marked,
                                       what=f"downlink message at step {step}")
        self.union_nnz = nnz
        if marked is not None:
            chosen = self.union_pos[:nnz][marked[:nnz] == 1]
            if chosen.size > self.capacity:
                raise WireFormatError(f"downlink at step {step} announces {chosen.size} positions, "
                                  f"more than K = {self.capacity}")
            self.announced[: chosen.size] = chosen
            self.announced_nnz = chosen.size
        self.aggregate[:] = 0
        sparse.scatter_values(self.union_pos, self.union_val, nnz, self.aggregate)
        return self.aggregate

    def apply(self, ctx, aggregate):
        if on_device(ctx.params):
            return self.device_step.apply(ctx.params, self.union_nnz)
        self.sgd.step(ctx.params, aggregate)
