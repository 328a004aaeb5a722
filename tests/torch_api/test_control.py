"""The stop protocol's verdicts (hpcgrad/torch/control.py), without MPI: ``decide`` is a pure
function of every rank's report, and ``pack``/``unpack`` carry a report exactly."""

import pytest

from hpcgrad.torch.control import (DONE, SERVER, STEP, NonFiniteGradientError, Report,
                                   StepMismatchError, decide, pack, unpack)

NAMES = ["body.weight", "body.bias", "head.weight"]


def step(steps=3, **kw):
    return Report(STEP, steps, lrs=(0.1,), **kw)


def test_pack_and_unpack_carry_a_report_exactly():
    report = Report(STEP, 7, (0, 2), 1, "skip", (0.1, 1 / 3), True)
    back = unpack(pack(report, 2))
    assert (back.kind, back.steps, back.nonfinite, back.policy, back.lrs, back.buffers) == \
        (STEP, 7, 1, "skip", (0.1, 1 / 3), True)
    assert back.missing == unpack(pack(Report(STEP, 0, (0, 2)), 0)).missing
    assert back.missing != unpack(pack(Report(STEP, 0, (0, 1)), 0)).missing
    assert unpack(pack(Report(SERVER), 2)).nonfinite is None


def test_agreeing_workers_go_and_all_done_stops():
    assert decide([Report(SERVER), step(), step()], NAMES).action == "go"
    assert decide([Report(SERVER), Report(DONE, 3), Report(DONE, 3)], NAMES).action == "stop"


def test_a_worker_that_finished_early_is_named():
    with pytest.raises(StepMismatchError, match=r"rank 2 finished after 3 optimizer steps "
                                                r"while rank 1 called step\(\) for step 4"):
        decide([Report(SERVER), step(), Report(DONE, 3)], NAMES)


def test_a_none_gradient_on_one_worker_names_the_rank_and_the_parameter():
    with pytest.raises(StepMismatchError, match="head.weight is None on rank 2 but not on rank 1"):
        decide([Report(SERVER), step(missing=()), step(missing=(2,))], NAMES)


def test_a_non_finite_gradient_names_the_rank_and_the_parameter_or_skips():
    with pytest.raises(NonFiniteGradientError, match="rank 2: .* parameter body.bias at step 3"):
        decide([Report(SERVER), step(), step(nonfinite=1)], NAMES)
    skip = decide([Report(SERVER), step(), step(nonfinite=1, policy="skip")], NAMES)
    assert skip.action == "skip"


def test_workers_with_different_learning_rates_are_refused():
    with pytest.raises(StepMismatchError, match="rank 2's optimizer has learning rates"):
        decide([Report(SERVER), step(), Report(STEP, 3, lrs=(0.2,))], NAMES)
