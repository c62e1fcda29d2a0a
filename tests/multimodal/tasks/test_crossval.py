"""Cross-validation through the runner: every row tested once, validation carved from the training folds,
groups kept whole, per-fold numbers and their mean +/- std in metrics.json."""

from __future__ import annotations

import json
import os
import statistics

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from multimodal import ConfigError, load_config, run


def _manifest(tmp_path, n=30):
    os.makedirs(tmp_path / "img", exist_ok=True)
    rows = []
    for i in range(n):
        day = i % 2 == 0
        Image.fromarray(np.full((16, 16, 3), 210 if day else 30, np.uint8)).save(tmp_path / "img" / f"{i}.png")
        rows.append({"text": f"{'sunny' if day else 'dark'} scene {i}", "image": f"img/{i}.png",
                     "label": "day" if day else "night", "speaker": f"spk{i % 3}", "fold": 1 + i % 3})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    return rows


def _cfg(tmp_path, tiny_text_dir, *overrides):
    base = {
        "data": {"train": str(tmp_path / "manifest.csv"), "num_workers": 0, "audio_column": None, "val_fraction": 0.2,
                 "feature_cache": None},
        "model": {"encoders": {"text": f"text:{tiny_text_dir}", "image": "image:test_efficientnet"},
                  "encoder_kwargs": {"image": {"img_size": 32}}, "pretrained": False, "fusion_dim": 16},
        "train": {"output_dir": str(tmp_path / "out"), "epochs": 1, "batch_size": 8, "log_with": "none",
                  "progress_bar": False, "save_checkpoints": False},
        "eval": {"html_report": False},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(base))
    return load_config(str(path), list(overrides))


def test_k_fold_tests_every_row_once_and_reports_mean_and_std(tmp_path, tiny_text_dir):
    rows = _manifest(tmp_path)
    metrics = run(_cfg(tmp_path, tiny_text_dir, "data.folds=3"))
    cv = metrics["cross_validation"]
    assert cv["num_folds"] == 3 and len(cv["folds"]) == 3
    out = tmp_path / "out"
    tested = []
    for fold in cv["folds"]:
        fold_dir = out / "folds" / fold["fold"]
        splits = {s: pd.read_csv(fold_dir / "splits" / f"{s}.csv") for s in ("train", "validation", "test")}
        names = {s: set(df["image"].map(os.path.basename)) for s, df in splits.items()}
        assert not (names["test"] & names["train"]) and not (names["test"] & names["validation"])
        assert not (names["train"] & names["validation"]) and len(names["validation"]) == 4  # 0.2 of 20 training rows
        assert fold["split_sizes"] == {"train": 16, "validation": 4, "test": 10}
        tested += sorted(names["test"])
        with open(fold_dir / "metrics.json") as f:
            assert json.load(f)["test"]["accuracy"] == fold["test"]["accuracy"]
    assert sorted(tested) == sorted(os.path.basename(r["image"]) for r in rows)  # each row tested exactly once
    for key in ("accuracy", "loss"):
        values = [f["test"][key] for f in cv["folds"]]
        assert cv["test_mean"][key] == pytest.approx(statistics.fmean(values))
        assert cv["test_std"][key] == pytest.approx(statistics.stdev(values))  # sample std (ddof=1)
    assert cv["test_std"]["loss"] > 0  # the folds differ, so the std check above can tell ddof=0 from ddof=1
    with open(out / "metrics.json") as f:
        assert json.load(f)["cross_validation"]["test_mean"]["accuracy"] == pytest.approx(cv["test_mean"]["accuracy"])
    assert "accuracy mean" in (out / "report.md").read_text()


def test_leave_one_group_out_and_fold_column(tmp_path, tiny_text_dir):
    _manifest(tmp_path)
    metrics = run(_cfg(tmp_path, tiny_text_dir, "data.folds=groups", "data.group_column=speaker", "data.shots_per_class=3"))
    cv = metrics["cross_validation"]
    assert [f["fold"] for f in cv["folds"]] == ["speaker=spk0", "speaker=spk1", "speaker=spk2"]
    for fold in cv["folds"]:
        split_dir = tmp_path / "out" / "folds" / fold["fold"] / "splits"
        test = pd.read_csv(split_dir / "test.csv")
        train = pd.read_csv(split_dir / "train.csv")
        assert test["speaker"].nunique() == 1 and test["speaker"].iloc[0] not in set(train["speaker"])
        # shots apply to the fold's training rows: 3 speakers-groups... per class (groups are whole speakers)
        assert fold["split_sizes"]["test"] == 10
    metrics = run(_cfg(tmp_path, tiny_text_dir, "data.fold_column=fold", f"train.output_dir={tmp_path / 'out2'}"))
    assert [f["fold"] for f in metrics["cross_validation"]["folds"]] == ["fold=1", "fold=2", "fold=3"]


def test_fold_config_errors(tmp_path, tiny_text_dir):
    _manifest(tmp_path, 6)
    with pytest.raises(ConfigError, match="data.group_column"):
        _cfg(tmp_path, tiny_text_dir, "data.folds=groups")
    with pytest.raises(ConfigError, match="not both"):
        _cfg(tmp_path, tiny_text_dir, "data.folds=3", "data.fold_column=fold")
    with pytest.raises(ConfigError, match="data.test"):
        _cfg(tmp_path, tiny_text_dir, "data.folds=3", f"data.test={tmp_path / 'manifest.csv'}")
