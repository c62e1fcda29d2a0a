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
from multimodal.config import check_config


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


def _speakers_manifest(tmp_path, speakers=6, per_speaker=4):
    """Text-only rows: `speakers` speakers, each with rows of both classes."""
    rows = [{"text": f"{'sunny' if i % 2 else 'dark'} {s}-{i}", "label": "day" if i % 2 else "night", "speaker": f"s{s}",
             "fold": 1 + s % 3} for s in range(speakers) for i in range(per_speaker)]
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    return rows


def _text_cfg(tmp_path, tiny_text_dir, *overrides):
    base = [f"data.train={tmp_path / 'manifest.csv'}", "data.demo=null", "data.image_column=null", "data.audio_column=null",
            "data.feature_cache=null", "data.num_workers=0", f"model.encoders={{text: 'text:{tiny_text_dir}'}}",
            f"train.output_dir={tmp_path / 'out'}", "eval.html_report=false"]
    return load_config(None, [*base, *overrides])


class _FakeRun:
    """Stands in for the runner: records each fold's splits and returns made-up metrics with nested entries."""

    def __init__(self):
        self.splits, self.configs = [], []

    def __call__(self, cfg, splits):
        self.splits.append(splits)
        self.configs.append(cfg)
        k = len(self.splits)
        test = {"accuracy": 0.5 + 0.1 * k, "num_examples": len(splits.test), "class_names": ["day", "night"],
                "per_class": {"day": {"f1": 0.2 * k}, "night": {"f1": 1.0 - 0.2 * k}},
                "image_to_text": {"R@1": 0.1 * k, "median_rank": float(k)}}
        return {"split_sizes": splits.sizes(), "test": test, "validation": {"loss": 1.0 / k}}


def test_nested_fold_metrics_are_aggregated_per_leaf(tmp_path, tiny_text_dir):
    """Per-class and per-direction dicts in a fold's metrics get a mean and std per leaf; what is not a number
    is listed, never silently dropped."""
    from multimodal.tasks.crossval import run_crossval

    _speakers_manifest(tmp_path)
    fake = _FakeRun()
    cv = run_crossval(_text_cfg(tmp_path, tiny_text_dir, "data.folds=3"), fake)["cross_validation"]
    assert len(fake.splits) == 3
    mean, std = cv["test_mean"], cv["test_std"]
    assert mean["per_class/day/f1"] == pytest.approx(0.4) and std["per_class/day/f1"] == pytest.approx(0.2)
    assert mean["per_class/night/f1"] == pytest.approx(0.6)
    assert mean["image_to_text/R@1"] == pytest.approx(0.2) and mean["image_to_text/median_rank"] == pytest.approx(2.0)
    assert mean["accuracy"] == pytest.approx(0.7) and mean["num_examples"] == pytest.approx(8.0)
    assert cv["test_not_aggregated"] == ["class_names"] and cv["validation_mean"]["loss"] == pytest.approx(11 / 18)
    with open(tmp_path / "out" / "metrics.json") as f:
        assert json.load(f)["cross_validation"]["test_mean"]["per_class/night/f1"] == pytest.approx(0.6)
    assert "per_class/day/f1 mean" in (tmp_path / "out" / "report.md").read_text()


def test_only_folds_runs_those_folds_and_says_so(tmp_path, tiny_text_dir):
    from multimodal.tasks.crossval import run_crossval

    _speakers_manifest(tmp_path)
    fake = _FakeRun()
    cv = run_crossval(_text_cfg(tmp_path, tiny_text_dir, "data.folds=3", "data.only_folds=[2, 0]"), fake)["cross_validation"]
    assert cv["num_folds"] == 3 and cv["folds_run"] == ["fold-1", "fold-3"] and cv["only_folds"] == [0, 2]
    assert [f["fold"] for f in cv["folds"]] == ["fold-1", "fold-3"] and len(fake.splits) == 2
    assert cv["test_mean"]["accuracy"] == pytest.approx(0.65)  # over the two folds that ran
    assert "of which fold-1, fold-3 ran (data.only_folds)" in (tmp_path / "out" / "report.md").read_text()
    fold_cfg = fake.configs[0]  # each fold's own config (saved with its run) passes the checks on its own
    assert fold_cfg.data.only_folds is None and fold_cfg.data.folds is None
    check_config(fold_cfg)
    with pytest.raises(ConfigError, match=r"data\.only_folds: \[3\] are not folds of this data, which has 3"):
        run_crossval(_text_cfg(tmp_path, tiny_text_dir, "data.fold_column=fold", "data.only_folds=[0, 3]"), _FakeRun())


def test_only_folds_is_checked_at_load_time(tmp_path, tiny_text_dir):
    _speakers_manifest(tmp_path)
    with pytest.raises(ConfigError, match=r"data\.only_folds: 3 is not a fold of data\.folds=3 \(positions 0 to 2\)"):
        _text_cfg(tmp_path, tiny_text_dir, "data.folds=3", "data.only_folds=[3]")
    with pytest.raises(ConfigError, match=r"data\.only_folds\[0\]: -1 is out of range; allowed: >= 0"):
        _text_cfg(tmp_path, tiny_text_dir, "data.folds=3", "data.only_folds=[-1]")
    with pytest.raises(ConfigError, match="distinct fold positions"):
        _text_cfg(tmp_path, tiny_text_dir, "data.folds=3", "data.only_folds=[1, 1]")
    with pytest.raises(ConfigError, match="set data.folds or data.fold_column"):
        _text_cfg(tmp_path, tiny_text_dir, "data.only_folds=[0]")


def test_few_groups_still_give_each_fold_a_validation_group(tmp_path, tiny_text_dir):
    """Issue 18: 6 speakers, one left out per fold: 10% of the 5 training speakers rounds to none, yet the notes
    said "validation carved out". Now one speaker is carved; with a single training speaker the note says none was."""
    from multimodal.tasks.crossval import run_crossval

    _speakers_manifest(tmp_path)
    fake = _FakeRun()
    run_crossval(_text_cfg(tmp_path, tiny_text_dir, "data.folds=groups", "data.group_column=speaker"), fake)
    for splits in fake.splits:
        speakers = {s: {splits_ds.value(p, "speaker") for p in range(len(splits_ds))}
                    for s, splits_ds in splits.items()}
        assert len(speakers["validation"]) == 1 and len(speakers["train"]) == 4 and len(speakers["test"]) == 1
        assert not speakers["validation"] & speakers["train"]
        assert "validation carved out of the training folds: 1 of 5 'speaker' groups" in " | ".join(splits.notes)
    _speakers_manifest(tmp_path, speakers=2)
    fake = _FakeRun()
    run_crossval(_text_cfg(tmp_path, tiny_text_dir, "data.folds=groups", "data.group_column=speaker",
                           f"train.output_dir={tmp_path / 'two'}"), fake)
    for splits in fake.splits:
        assert splits.validation is None and not any(n.startswith("validation carved") for n in splits.notes)
        assert "no validation carved out of the training folds: 1 training 'speaker' groups cannot spare one" in splits.notes


class _AutoRun(_FakeRun):
    """A fold run that reports a `train.method=auto` selection: the probe in odd folds, the head in even ones."""

    def __call__(self, cfg, splits):
        out = super().__call__(cfg, splits)
        return {**out, "method_selection": {"chosen": ("probe", "head")[len(self.splits) % 2 == 0], "candidates": []}}


def test_auto_selections_are_kept_per_fold_and_counted(tmp_path, tiny_text_dir):
    from multimodal.tasks.crossval import run_crossval

    _speakers_manifest(tmp_path)
    cv = run_crossval(_text_cfg(tmp_path, tiny_text_dir, "data.folds=3"), _AutoRun())["cross_validation"]
    assert [f["method_selection"]["chosen"] for f in cv["folds"]] == ["probe", "head", "probe"]
    assert cv["methods_kept"] == {"probe": 2, "head": 1}
    assert "fold-2: " in (report := (tmp_path / "out" / "report.md").read_text()) and "method kept: head" in report
