"""The classification recipes end to end as a user runs them: python and 2-process `accelerate launch`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml
from PIL import Image

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _image_rows(root, n, start=0):
    os.makedirs(root / "img", exist_ok=True)
    rows = []
    for i in range(start, start + n):
        day = i % 2 == 0
        Image.fromarray(np.full((16, 16, 3), 210 if day else 30, np.uint8)).save(root / "img" / f"{i}.png")
        rows.append({"text": f"{'sunny' if day else 'dark'} scene {i}", "image": f"img/{i}.png", "label": "day" if day else "night"})
    return rows


def _write_config(tmp_path, data: dict, encoders: dict, **train) -> str:
    cfg = {
        "data": {"num_workers": 0, "audio_column": None, **data},
        "model": {
            "encoders": encoders,
            "encoder_kwargs": {"image": {"img_size": 32}} if "image" in encoders else {},
            "pretrained": False,
            "fusion_dim": 16,
        },
        "train": {"output_dir": str(tmp_path / "out"), "epochs": 2, "batch_size": 4, "head_lr": 0.01,
                  "log_with": "none", "progress_bar": False, **train},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _check_outputs(out) -> dict:
    for name in ("metrics.json", "config.yaml", "labels.json", "training_curves.png", "model/config.json",
                 "model/model.safetensors", "model/labels.json", "report.md", "splits/train.csv"):
        assert os.path.exists(os.path.join(out, name)), name
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


def test_text_image_recipe_with_user_manifest(tmp_path, tiny_text_dir):
    rows = _image_rows(tmp_path, 20)
    rows[3]["image"] = "img/does_not_exist.png"  # skipped and counted
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    config = _write_config(
        tmp_path,
        {"train": str(tmp_path / "manifest.csv"), "val_fraction": 0.2, "test_fraction": 0.2, "on_bad_sample": "error"},
        {"text": f"text:{tiny_text_dir}", "image": "image:test_efficientnet"},
    )
    cmd = [sys.executable, os.path.join(ROOT, "recipes", "text_image_classification.py"), "--config", config,
           "data.on_bad_sample=skip", "train.epochs=3", "eval.baselines=true", "model.fusion=gated"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = _check_outputs(tmp_path / "out")
    assert metrics["fusion"] == "gated" and metrics["epochs_run"] == 3
    assert sum(metrics["skipped"][s]["total"] for s in metrics["skipped"]) == 1
    assert metrics["skipped"]["train"]["by_reason"].get("image", 0) + metrics["skipped"].get("validation", {}).get(
        "by_reason", {}).get("image", 0) + metrics["skipped"].get("test", {}).get("by_reason", {}).get("image", 0) == 1
    assert sum(metrics["split_sizes"].values()) == 19
    assert metrics["test"]["num_examples"] == metrics["split_sizes"]["test"]
    assert set(metrics["baselines"]) == {"image", "text"} and "accuracy" in metrics["baselines"]["text"]["test"]
    assert metrics["chance"]["uniform_accuracy"] == 0.5
    assert json.load(open(tmp_path / "out" / "labels.json"))["labels"] == ["day", "night"]
    resolved = yaml.safe_load(open(tmp_path / "out" / "config.yaml"))
    assert resolved["train"]["epochs"] == 3 and resolved["data"]["on_bad_sample"] == "skip"
    # the summary compares fused and single-modality models on the metric that selected the model
    assert metrics["comparison"]["metric"] == metrics["metric_for_best"] == "macro_f1"
    # the written test split, evaluated by the CLI, reproduces the run's own test metrics exactly
    from multimodal.evaluation.cli import main as evaluate

    assert evaluate(["--model", str(tmp_path / "out" / "model"), "--data", str(tmp_path / "out" / "splits" / "test.csv"),
                     "--task", "classification", "--output", str(tmp_path / "eval")]) == 0
    again = json.load(open(tmp_path / "eval" / "metrics.json"))
    for key in ("num_examples", "accuracy", "macro_f1", "confusion_matrix", "class_names"):
        assert again[key] == metrics["test"][key], key
    assert again["loss"] == pytest.approx(metrics["test"]["loss"], rel=1e-5)


def test_text_audio_recipe(tmp_path, tiny_text_dir):
    os.makedirs(tmp_path / "wav")
    rows = []
    for i in range(12):
        tone = i % 2 == 0
        t = np.arange(8000) / 16000
        wave = np.sin(2 * np.pi * 440 * t) if tone else np.random.default_rng(i).normal(0, 0.3, 8000)
        sf.write(tmp_path / "wav" / f"{i}.wav", wave.astype(np.float32) * 0.5, 16000)
        rows.append({"caption": f"clip {i}", "wav": f"wav/{i}.wav", "label": "tone" if tone else "noise",
                     "split": "train" if i < 8 else "validation"})
    rows[9]["wav"] = None  # missing audio: kept, present=False
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    config = _write_config(
        tmp_path,
        {"train": str(tmp_path / "m.jsonl"), "split_column": "split", "text_column": "caption",
         "audio_column": "wav", "image_column": None},
        {"text": f"text:{tiny_text_dir}", "audio": "audio-mel:test_efficientnet"},
    )
    cmd = [sys.executable, os.path.join(ROOT, "recipes", "text_audio_classification.py"), "--config", config,
           "model.encoder_kwargs={audio: {max_seconds: 0.5}}", "data.num_workers=2", "train.mixed_precision=bf16",
           "train.metric_for_best=accuracy", "eval.baselines=true"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = _check_outputs(tmp_path / "out")
    assert metrics["modalities"] == ["audio", "text"]
    assert metrics["split_sizes"] == {"train": 8, "validation": 4}
    assert metrics["validation"]["num_examples"] == 4
    assert all(np.isfinite(e["loss"]) for e in metrics["history"])  # trained in bf16 autocast
    assert metrics["comparison"]["metric"] == "accuracy"  # not macro-F1 when accuracy selects the model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_launch_counts_each_validation_example_once(tmp_path, tiny_text_dir):
    pd.DataFrame(_image_rows(tmp_path, 10)).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame(_image_rows(tmp_path, 7, start=10)).to_csv(tmp_path / "val.csv", index=False)
    config = _write_config(
        tmp_path,
        {"train": str(tmp_path / "train.csv"), "validation": str(tmp_path / "val.csv")},
        {"text": f"text:{tiny_text_dir}", "image": "image:test_efficientnet"},
    )
    env = _env()
    env["ACCELERATE_USE_CPU"] = "1"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()),
           os.path.join(ROOT, "recipes", "text_image_classification.py"), "--config", config,
           "eval.batch_size=2", "train.epochs=1", "eval.baselines=true"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = _check_outputs(tmp_path / "out")
    assert metrics["num_processes"] == 2
    # 7 examples over 2 processes in batches of 2: DDP pads with duplicates, gather_for_metrics drops them
    assert metrics["validation"]["num_examples"] == 7
    assert metrics["validation"]["num_unique_examples"] == 7
    assert metrics["history"][0]["num_examples"] == 7
    for modality in ("image", "text"):  # baselines run in the same launch, after the fused model
        assert metrics["baselines"][modality]["validation"]["num_unique_examples"] == 7
