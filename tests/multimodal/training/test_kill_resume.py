"""kill -9 in the middle of a checkpoint write, then train.resume_from=latest: the torn checkpoint is skipped and
the run ends bit-identical to an uninterrupted one (the fast case of benchmarks/fault_injection.py)."""

from __future__ import annotations

import os
import signal
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "benchmarks"))

import fault_injection  # noqa: E402


@pytest.mark.slow
def test_kill_inside_a_checkpoint_write_then_resume_is_bit_identical(tmp_path):
    data = fault_injection.make_data(str(tmp_path / "data"))
    reference_run = fault_injection.child(data, str(tmp_path / "reference"), 2, {})
    assert reference_run["rc"] == 0, reference_run["output"][-2000:]
    reference = fault_injection.outputs(str(tmp_path / "reference"))
    out = str(tmp_path / "out")
    # save 5 is step-0000005, mid-epoch 2; write 1 is its model.safetensors, cut in half
    killed = fault_injection.child(data, out, 2, {"save": 5, "event": 1, "fraction": 0.5})
    assert killed["rc"] == -signal.SIGKILL, killed["output"][-2000:]
    torn = os.path.join(out, "checkpoints", "step-0000005")
    assert os.path.isfile(os.path.join(torn, "model.safetensors"))
    assert not os.path.exists(os.path.join(torn, "trainer_state.json"))
    resumed = fault_injection.resume(data, out, 2, {})
    assert resumed["rc"] == 0, resumed["output"][-2000:]
    assert f"resume_from=latest: skipped {torn}: not a complete checkpoint" in resumed["output"]
    assert "resumed from " + os.path.join(out, "checkpoints", "epoch-001") in resumed["output"]
    assert fault_injection.same(fault_injection.outputs(out), reference)
