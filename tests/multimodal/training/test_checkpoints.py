"""Checkpoints under faults: damaged or torn folders are skipped with the reason and resume stays bit-identical,
no checkpoint holds NaN/inf, a pickle that refers to code is refused before anything is unpickled."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from multimodal import run
from multimodal.config import ConfigError
from multimodal.files import write_json
from multimodal.tasks.run_folder import check_resume
from multimodal.training.checkpoints import (
    checkpoints,
    folder_mib,
    resolve_latest,
    resume_target,
    verify_checkpoint,
)
from multimodal.training.integrity import CheckpointError, NonFiniteWeightsError, file_manifest
from tests.multimodal.training.test_trainer import _config, _parts, _run, _trainer, _weights


def _truncate(path, keep: float = 0.5) -> None:
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])


def test_damaged_and_torn_checkpoints_are_skipped_and_resume_stays_bit_identical(tmp_path, tiny_text_dir, capsys):
    # 18 training rows, batch 6: 3 optimizer steps per epoch, 9 in all; a checkpoint after every step.
    base = ["train.save_every_steps=1", "train.keep_checkpoints=null", "train.log_every=50"]
    reference = _weights(_run(_config(tmp_path / "a", tiny_text_dir, *base)))
    cfg = _config(tmp_path / "b", tiny_text_dir, *base, "train.stop_after_steps=5")
    _run(cfg)
    root = os.path.join(cfg.train.output_dir, "checkpoints")
    names = [os.path.basename(p) for p in checkpoints(root)]
    assert names == ["step-0000001", "step-0000002", "epoch-001", "step-0000004", "step-0000005"]
    _truncate(os.path.join(root, "step-0000005", "trainer_state.json"))  # as an in-place write cut short
    _truncate(os.path.join(root, "step-0000004", "model.safetensors"))
    torn = os.path.join(root, "step-0000006")  # a kill in the middle of accelerate's save_state
    os.makedirs(torn)
    with open(os.path.join(torn, "model.safetensors"), "wb") as f:
        f.write(b"\x00" * 100)

    resolved, _, skipped = resolve_latest(root)
    assert resolved.endswith("epoch-001") and len(skipped) == 3
    capsys.readouterr()
    cfg = copy.deepcopy(cfg)
    cfg.train.stop_after_steps, cfg.train.resume_from = None, "latest"
    resumed = _run(cfg)
    out = capsys.readouterr().out
    assert "skipped " + torn + ": not a complete checkpoint (no trainer_state.json" in out
    assert "step-0000005/trainer_state.json: not readable JSON (JSONDecodeError" in out
    assert "step-0000004/model.safetensors:" in out and "were written (truncated or replaced)" in out
    assert f"resumed from {os.path.join(root, 'epoch-001')}: epoch 1, batch 0, step 3" in out
    size = folder_mib(os.path.join(root, "epoch-003"))  # every checkpoint's size is in the log (issue 20)
    assert size > 0 and f"checkpoint epoch-003: {size:.1f} MiB (weights, optimizer, scheduler, RNG" in out
    weights = _weights(resumed)
    for k in reference:
        assert torch.equal(weights[k], reference[k]), k
    assert not os.path.exists(torn)  # pruned by the next save
    for path in checkpoints(root):  # every folder left is complete and intact again
        verify_checkpoint(path)


def test_a_pickle_that_refers_to_code_is_refused_before_unpickling(tmp_path, tiny_text_dir):
    cfg = _config(tmp_path, tiny_text_dir)
    trainer = _trainer(cfg, *_parts(cfg))
    path = trainer.save_checkpoint("step-0000000")
    assert verify_checkpoint(path)["format"] == 1
    notes: list[str] = []
    assert resume_target("latest", os.path.dirname(path), notes.append, processes=2)[0] == path
    assert notes == [f"warning: {path} was written by 1 process(es) and is resumed by 2: the random states do not "
                     "carry over, so the run will not match an uninterrupted one bit for bit"]
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return os.makedirs, (str(marker),)

    scheduler_state = torch.load(os.path.join(path, "custom_checkpoint_0.pkl"), weights_only=True)
    torch.save({**scheduler_state, "x": Payload()}, os.path.join(path, "custom_checkpoint_0.pkl"))
    with pytest.raises(CheckpointError, match=r"custom_checkpoint_0\.pkl: (contents changed|\d+ bytes, but)"):
        verify_checkpoint(path)
    saved = json.loads(open(os.path.join(path, "trainer_state.json")).read())
    saved["files"] = file_manifest(path, skip=["trainer_state.json"])  # the manifest is rewritten to match
    write_json(os.path.join(path, "trainer_state.json"), saved)
    with pytest.raises(CheckpointError, match=r"custom_checkpoint_0\.pkl: refers to (posix|os)\.makedirs.*refusing"):
        trainer.load_checkpoint(path)
    train = copy.deepcopy(cfg.train)
    train.resume_from = path
    with pytest.raises(ConfigError, match=r"train\.resume_from: .*custom_checkpoint_0\.pkl: refers to"):
        check_resume(train)
    assert not marker.exists()


def test_no_checkpoint_holds_nan_weights(tmp_path, tiny_text_dir):
    cfg = _config(tmp_path, tiny_text_dir, "train.save_every_steps=1", "train.log_every=50", "train.max_grad_norm=null",
                  "train.keep_checkpoints=null")
    trainer = _trainer(cfg, *_parts(cfg))
    original = trainer.optimizer.step

    def poison(*args, **kwargs):  # the update of optimizer step 2 makes the head's weights NaN; its loss was finite
        original(*args, **kwargs)
        if trainer.state.global_step == 1:
            with torch.no_grad():
                trainer.unwrapped_model.head.net[-1].weight.fill_(float("nan"))

    trainer.optimizer.step = poison
    with pytest.raises(NonFiniteWeightsError, match=r"'head\.net\.\d+\.weight' holds NaN/inf, so checkpoint .*"
                                                    r"step-0000002 \(optimizer step 2\) was not written"):
        trainer.train()
    root = os.path.join(cfg.train.output_dir, "checkpoints")
    saved = checkpoints(root)
    assert [os.path.basename(p) for p in saved] == ["step-0000001"]
    for path in saved:
        for name, tensor in load_file(os.path.join(path, "model.safetensors")).items():
            assert torch.isfinite(tensor).all(), (path, name)


def test_stop_before_the_first_epoch_ends_says_so(tmp_path, tiny_text_dir):
    cfg = _config(tmp_path, tiny_text_dir, "train.stop_after_steps=1", "eval.baselines=false", "data.feature_cache=null")
    with pytest.raises(ConfigError, match=r"train\.stop_after_steps=1 stopped training at optimizer step 1, before "
                                          r"the first epoch ended.*resume_from=latest"):
        run(cfg)
