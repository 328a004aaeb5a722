"""``hpcgrad bench peers`` on a tiny model under a real mpiexec: DDP (gloo) and hpcgrad train
the same model on the same data, and the figures are sane (no timing assertions)."""

import json
import math

from mpirun import run_mpi


def _finite(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


def test_peers_runs_ddp_and_hpcgrad_on_the_same_model_and_data(tmp_path):
    path = tmp_path / "peers.json"
    proc = run_mpi(3, ["bench", "peers", "--features", "32", "--hidden", "16",
                       "--iterations", "6", "--warmup", "1",
                       "--ddp", "fp32", "--ddp", "fp16", "--ddp", "powersgd",
                       "--algorithm", "allreduce", "--algorithm", "signum-mv",
                       "--json", str(path)], timeout=400)
    assert proc.returncode == 0, proc.stderr
    assert "x DDP" in proc.stdout
    data = json.loads(path.read_text())
    runs = data["runs"]
    assert sorted(runs) == ["allreduce", "ddp-fp16", "ddp-fp32", "ddp-powersgd", "signum-mv"]
    d = data["num_params"]
    assert d == (32 * 16 + 16) + (16 * 16 + 16) + (16 * 10 + 10)
    for name, r in runs.items():
        for key in ("ms_per_step", "compute_ms", "communication_ms", "optimizer_ms",
                    "wall_ms_per_step", "final_loss", "ratio_to_ddp_fp32"):
            assert _finite(r[key]), (name, key, r[key])
        assert 0 <= r["final_accuracy"] <= 1, name
    assert runs["ddp-fp32"]["ratio_to_ddp_fp32"] == 1.0
    # Ring all-reduce of d fp32 over 2 workers: 2(M-1)/M * 4d; fp16 half of it.
    assert runs["ddp-fp32"]["bytes_sent_per_worker"] == 4 * d
    assert runs["ddp-fp16"]["bytes_sent_per_worker"] == 2 * d
    assert runs["allreduce"]["bytes_sent_per_worker"] == 4 * d
    assert runs["signum-mv"]["bytes_sent_per_worker"] == 32 + (d + 7) // 8
    # Same init, same data in the same order, the same SGD: DDP fp32 and hpcgrad's allreduce
    # take the same steps up to float rounding of the reduction.
    assert math.isclose(runs["ddp-fp32"]["final_loss"], runs["allreduce"]["final_loss"],
                        rel_tol=1e-4)


def test_peers_world_too_small_is_a_clear_error():
    proc = run_mpi(2, ["bench", "peers", "--features", "8", "--hidden", "4"])
    assert proc.returncode == 2
    assert "at least 3 MPI ranks" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_peers_too_large_a_model_is_refused_before_ddp_allocates():
    proc = run_mpi(3, ["bench", "peers", "--hidden", "100000000"])
    assert proc.returncode == 2
    assert "of memory" in proc.stderr and "--hidden" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
