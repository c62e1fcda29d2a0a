"""Launched on two processes by test_auto_agreement: method auto's selection when the processes' clocks disagree.

Process 0 measures a fast training step (every trained candidate fits the budget), process 1 a slow one (none
would). Each writes the candidates' statuses it ended with to ``<out>/rank<N>.json``."""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

from multimodal.config.loading import config_from_dict
from multimodal.training import auto
from multimodal.training.accelerator import finish_processes, process_state


class _Task:
    label_type, uses_fusion = "single_label", True

    def __init__(self, cfg):
        self.cfg = cfg

    def metric_mode(self, metric):
        return "max"


def _train(task, splits, out, main):
    """A candidate's run, faked: a model folder and a validation score."""
    os.makedirs(os.path.join(out, "model"), exist_ok=True)
    return {"metric_for_best": "accuracy", "validation": {"accuracy": 0.5, "loss": 1.0}}, {}


def main(out: str) -> None:
    state = process_state()
    auto.step_seconds = lambda *a, **k: (0.001 if state.process_index == 0 else 1000.0, 10)
    cfg = config_from_dict({"train": {"method": "auto", "time_budget_s": 100, "epochs": 1}}, check=False)
    splits = SimpleNamespace(train=[0] * 1000, validation=[0] * 100)
    result, _ = auto.select_method(_Task(cfg), splits, out, _train, None, lambda s: None)
    statuses = {c["method"]: c["status"] for c in result["method_selection"]["candidates"]}
    with open(os.path.join(out, f"rank{state.process_index}.json"), "w") as f:
        json.dump(statuses, f)
    finish_processes()


if __name__ == "__main__":
    main(sys.argv[1])
