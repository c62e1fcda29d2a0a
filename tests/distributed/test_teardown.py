"""A launched run tears its process group down at its successful end (left to interpreter exit, gloo's worker
threads can outlive the interpreter and abort a process whose run had finished)."""

from __future__ import annotations

import os

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_finish_processes_destroys_the_group_and_is_a_no_op_without_one(tmp_path):
    import torch.distributed as dist

    from multimodal.training.accelerator import finish_processes

    assert not dist.is_initialized()
    finish_processes()  # no group: nothing to do
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        finish_processes()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():  # a failed check must not leave a group to the tests after this one
            dist.destroy_process_group()


@pytest.mark.parametrize("entry", ["recipe", "train"])
def test_the_command_line_entries_finish_their_processes(tmp_path, monkeypatch, entry):
    import multimodal.tasks.runner as runner
    import multimodal.train as train

    calls = []
    module = runner if entry == "recipe" else train
    monkeypatch.setattr(module, "finish_processes", lambda: calls.append(entry))
    monkeypatch.setattr(module, "run", lambda cfg: {"test": {"accuracy": 1.0}})
    monkeypatch.setattr(module, "summarize", lambda metrics: "summary")
    out = f"train.output_dir={tmp_path / 'out'}"
    if entry == "recipe":
        runner.recipe_main(os.path.join(ROOT, "recipes", "configs", "text_image_classification.yaml"), [out])
    else:
        assert train.main(["--recipe", "text_image_classification", out]) == 0
    assert calls == [entry]
