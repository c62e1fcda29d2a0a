"""Task multitask: one head per task on one fused vector, weighted losses, missing labels masked, metrics per
task, saved and reloaded, scored again by the evaluate CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from multimodal import ConfigError, load_config, load_model, run
from multimodal.data import DataError
from multimodal.evaluation.cli import main as evaluate
from multimodal.models import MultiTaskHead, MultiTaskModel

TASKS = [{"name": "kind", "task": "single_label", "num_outputs": 3, "weight": 1.0},
         {"name": "tags", "task": "multi_label", "num_outputs": 2, "weight": 0.5},
         {"name": "level", "task": "regression", "num_outputs": 1, "weight": 2.0}]


def test_loss_is_the_weighted_sum_over_labelled_rows_only():
    torch.manual_seed(0)
    head = MultiTaskHead(8, TASKS)
    logits = torch.randn(4, 6, requires_grad=True)
    nan = float("nan")
    labels = torch.tensor([[0, 1, 0, 0.5], [2, nan, nan, nan], [nan, 0, 1, 1.5], [1, 1, 1, nan]])
    loss = head.loss(logits, labels)
    ce = torch.nn.functional.cross_entropy(logits[[0, 1, 3], :3], torch.tensor([0, 2, 1]))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[[0, 2, 3], 3:5], labels[[0, 2, 3], 1:3])
    mse = ((logits[[0, 2], 5] - labels[[0, 2], 3]) ** 2).mean()
    torch.testing.assert_close(loss, ce + 0.5 * bce + 2.0 * mse)
    loss.backward()
    assert torch.all(logits.grad[2, :3] == 0) and torch.all(logits.grad[1, 3:] == 0)  # missing labels: no gradient
    assert torch.all(logits.grad[3, 5] == 0) and logits.grad[0].abs().sum() > 0
    nothing = head.loss(logits.detach(), torch.full((4, 4), nan))
    assert float(nothing) == 0.0  # a batch with no labels at all adds nothing (and is not NaN)


def _manifest(root, n=36):
    os.makedirs(root / "img", exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        bright = i % 3
        Image.fromarray(np.full((16, 16, 3), 40 + 80 * bright, np.uint8)).save(root / "img" / f"{i}.png")
        rows.append({"text": f"scene {i} {'big' if i % 2 else 'small'}", "image": f"img/{i}.png",
                     "kind": ["dark", "mid", "light"][bright] if i % 5 else None,  # every 5th row: no kind label
                     "tags": "big" if i % 2 else "small|round",
                     "level": float(bright) + rng.normal(0, 0.1) if i % 4 else None,
                     "split": "test" if i >= 28 else ("validation" if i >= 22 else "train")})
    pd.DataFrame(rows).to_csv(root / "m.csv", index=False)
    return rows


def _cfg(root, tiny_text_dir, *overrides):
    base = {
        "data": {"train": str(root / "m.csv"), "split_column": "split", "num_workers": 0, "audio_column": None,
                 "label_column": None, "feature_cache": None},
        "model": {"task": "multitask", "encoders": {"text": f"text:{tiny_text_dir}", "image": "image:test_efficientnet"},
                  "encoder_kwargs": {"image": {"img_size": 32}}, "pretrained": False, "fusion_dim": 16,
                  "tasks": {"kind": {"task": "single_label"}, "tags": {"task": "multi_label", "weight": 0.5},
                            "level": {"column": "level", "task": "regression", "weight": 2.0}}},
        "train": {"output_dir": str(root / "out"), "epochs": 2, "batch_size": 8, "log_with": "none",
                  "progress_bar": False, "save_checkpoints": False, "head_lr": 0.01},
        "eval": {"html_report": False},
    }
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(base, sort_keys=False))
    return load_config(str(path), list(overrides))


def test_multitask_run_metrics_per_task_reload_and_evaluate_cli(tmp_path, tiny_text_dir):
    rows = _manifest(tmp_path)
    metrics = run(_cfg(tmp_path, tiny_text_dir))
    test = metrics["test"]
    test_rows = [r for r in rows if r["split"] == "test"]
    assert test["kind/num_labelled"] == sum(r["kind"] is not None for r in test_rows)
    assert test["level/num_labelled"] == sum(r["level"] is not None for r in test_rows) < len(test_rows)
    assert test["tags/num_labelled"] == len(test_rows)
    for key in ("kind/accuracy", "kind/macro_f1", "tags/micro_f1", "level/mse", "level/r2", "loss", "kind/loss"):
        assert isinstance(test[key], float), key
    assert test["loss"] == pytest.approx(test["kind/loss"] + 0.5 * test["tags/loss"] + 2.0 * test["level/loss"], rel=1e-5)
    assert metrics["metric_for_best"] == "loss"
    model = load_model(tmp_path / "out" / "model")
    assert isinstance(model, MultiTaskModel) and [t["name"] for t in model.head.tasks] == ["kind", "tags", "level"]
    assert model.head.tasks[0]["labels"] == ["dark", "light", "mid"]
    out = tmp_path / "eval"
    assert evaluate(["--model", str(tmp_path / "out" / "model"), "--data", str(tmp_path / "out" / "splits" / "test.csv"),
                     "--task", "classification", "--output", str(out)]) == 0
    with open(out / "metrics.json") as f:
        again = json.load(f)
    for key in ("kind/accuracy", "tags/micro_f1", "level/num_labelled"):
        assert again[key] == test[key], key
    assert again["level/mse"] == pytest.approx(test["level/mse"], rel=1e-5)
    # model selection by one task's metric
    metrics = run(_cfg(tmp_path, tiny_text_dir, "train.metric_for_best=kind/macro_f1", f"train.output_dir={tmp_path / 'o2'}"))
    assert metrics["metric_for_best"] == "kind/macro_f1"


def test_multitask_errors_name_the_task_and_row(tmp_path, tiny_text_dir):
    rows = _manifest(tmp_path)
    with pytest.raises(ConfigError, match="model.tasks.kind.task: invalid choice 'single'"):
        _cfg(tmp_path, tiny_text_dir, "model.tasks.kind.task=single")
    with pytest.raises(ConfigError, match="model.tasks.kind: unknown key"):
        _cfg(tmp_path, tiny_text_dir, "model.tasks.kind.colum=x")
    with pytest.raises(ConfigError, match="kind/nope"):
        _cfg(tmp_path, tiny_text_dir, "train.metric_for_best=kind/nope")
    rows[30]["level"] = "high"  # a test row with a non-number target
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DataError, match=r"row 31 \(line 32\): task 'level', column 'level': target 'high' is not a number"):
        run(_cfg(tmp_path, tiny_text_dir))
    metrics = run(_cfg(tmp_path, tiny_text_dir, "data.on_bad_sample=skip", "train.epochs=1"))
    assert metrics["skipped"]["test"]["by_reason"] == {"label:level": 1}
