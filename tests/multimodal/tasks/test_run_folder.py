"""A run never reports another run's results: an output folder holding an earlier run is refused unless the
run resumes it or ``train.overwrite_output_dir`` replaces it (deleting only what a run writes)."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from multimodal import load_config, run
from multimodal.config import ConfigError, TrainConfig
from multimodal.tasks.run_folder import prepare_output_dir


def _train(tmp_path, **kwargs) -> TrainConfig:
    return TrainConfig(output_dir=str(tmp_path / "out"), **kwargs)


def test_free_folder_passes(tmp_path):
    assert prepare_output_dir(_train(tmp_path)) == ""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model").mkdir()  # an empty folder is no run
    (tmp_path / "out" / "config.yaml").write_text("x")
    assert prepare_output_dir(_train(tmp_path)) == ""


def test_finished_and_unfinished_runs_are_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoints" / "epoch-001").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"already holds an unfinished run \(checkpoints/\).*resume_from=latest.*"
                                          r"overwrite_output_dir=true"):
        prepare_output_dir(_train(tmp_path))
    (out / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"train\.output_dir .* already holds a finished run \(metrics\.json written"):
        prepare_output_dir(_train(tmp_path))


def test_overwrite_removes_only_what_a_run_writes(tmp_path):
    out = tmp_path / "out"
    for d in ("model", "checkpoints/epoch-001", "baselines/text/model", "splits", "my_data"):
        (out / d).mkdir(parents=True)
        (out / d / "f").write_text("x")
    for f in ("metrics.json", "report.md", "retrieval_text_to_image.png", "notes.txt"):
        (out / f).write_text("x")
    note = prepare_output_dir(_train(tmp_path, overwrite_output_dir=True))
    assert "removed" in note and "model" in note
    assert sorted(os.listdir(out)) == ["my_data", "notes.txt"]
    assert prepare_output_dir(_train(tmp_path, overwrite_output_dir=True), is_main=False) == ""


def test_resume_needs_a_checkpoint(tmp_path):
    out = tmp_path / "out"
    (out / "model").mkdir(parents=True)
    (out / "model" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"resume_from=latest: no complete, intact checkpoint under .*checkpoints"):
        prepare_output_dir(_train(tmp_path, resume_from="latest"))
    with pytest.raises(ConfigError, match=r"train\.resume_from: .*nowhere' does not exist"):
        prepare_output_dir(_train(tmp_path, resume_from=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match=r"model: not a complete checkpoint \(no trainer_state\.json"):
        prepare_output_dir(_train(tmp_path, resume_from=str(out / "model")))
    ckpt = out / "checkpoints" / "epoch-001"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"skipped .*epoch-001.*trainer_state\.json: no 'trainer' state object"):
        prepare_output_dir(_train(tmp_path, resume_from="latest"))
    (ckpt / "trainer_state.json").write_text('{"trainer": {"epoch": 1, "batch_in_epoch": 0, "global_step": 2}}')
    assert prepare_output_dir(_train(tmp_path, resume_from="latest")).endswith("epoch-001")


def _config(tmp_path, tiny_text_dir, *overrides):
    img = tmp_path / "img"
    img.mkdir(exist_ok=True)
    rows = []
    for i in range(16):
        day = i % 2 == 0
        Image.fromarray(np.full((16, 16, 3), 210 if day else 30, np.uint8)).save(img / f"{i}.png")
        rows.append({"text": f"{'sunny' if day else 'dark'} {i}", "image": f"img/{i}.png", "label": "day" if day else "night"})
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    return load_config(None, [
        "data.demo=null", f"data.train={tmp_path / 'train.csv'}", "data.audio_column=null", "data.num_workers=0",
        "data.val_fraction=0.25", "data.test_fraction=0.25", "data.feature_cache=null",
        f"model.encoders={{text: 'text:{tiny_text_dir}', image: 'image:test_efficientnet'}}",
        "model.encoder_kwargs={image: {img_size: 32}}", "model.pretrained=false", "model.fusion_dim=8",
        f"train.output_dir={tmp_path / 'out'}", "train.batch_size=4", "train.log_with=none", "train.progress_bar=false",
        "train.save_checkpoints=false", *overrides])


@pytest.mark.slow
def test_second_run_into_a_finished_folder(tmp_path, tiny_text_dir):
    first = run(_config(tmp_path, tiny_text_dir, "train.epochs=1", "model.fusion=concat"))
    assert first["fusion"] == "concat"
    before = os.path.getmtime(tmp_path / "out" / "metrics.json")
    with pytest.raises(ConfigError, match="already holds a finished run"):
        run(_config(tmp_path, tiny_text_dir, "train.epochs=2", "model.fusion=gated"))
    assert os.path.getmtime(tmp_path / "out" / "metrics.json") == before  # nothing of the first run was touched
    second = run(_config(tmp_path, tiny_text_dir, "train.epochs=2", "model.fusion=gated",
                         "train.overwrite_output_dir=true"))
    assert second["fusion"] == "gated" and second["epochs_run"] == 2 and len(second["history"]) == 2
    with open(tmp_path / "out" / "model" / "config.json") as f:
        assert json.load(f)["fusion"]["name"] == "gated"  # the reported model is this run's
