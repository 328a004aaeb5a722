"""``bench micro``'s worker-step figures (hpcgrad/bench/worker_steps.py): every label is timed
fused and through the reference path, against the copy of the same rounds."""

from hpcgrad.bench import worker_steps


def test_every_label_is_timed_fused_and_reference_against_the_copy():
    result = worker_steps.run(70_000, repeat=1, context=True)
    assert set(result) == set(worker_steps.LABELS)
    for label, entry in result.items():
        t = entry["seconds"]
        assert set(t) == {"copy", "fused", "reference"}, label
        assert min(t.values()) > 0, label
        assert entry["vs_copy"] == t["fused"] / t["copy"]
    lines = worker_steps.report(result)
    assert len(lines) == 1 + len(worker_steps.LABELS)
    assert all("x copy" in line for line in lines[1:])
