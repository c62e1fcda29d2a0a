"""The retrieval recipes end to end at tiny size: built-in demos (text-image, text-audio, image-audio), a user
manifest split by item, frozen towers (LiT), the test split evaluated exactly as the evaluate CLI does."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys

import pandas as pd
import pytest
import torch

from multimodal import DualEncoder, load_config, make_demo
from multimodal.evaluation.cli import main as evaluate
from multimodal.tasks import RetrievalTask

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _recipe(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "recipes", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _common(tmp_path) -> list[str]:
    return [f"train.output_dir={tmp_path / 'out'}", "train.epochs=2", "train.batch_size=4", "train.log_with=none",
            "train.progress_bar=false", f"data.feature_cache={tmp_path / 'cache'}", "model.fusion_dim=16",
            "model.pretrained=false", "eval.html_report=true", f"data.demo_dir={tmp_path / 'demo'}"]


def _check_metric_ranges(m: dict, a: str, b: str) -> None:
    """R@K rises with K and ends at most at 1; ranks are at least 1 and at most the gallery size."""
    for x, y in ((a, b), (b, a)):
        r = [m[f"{x}_to_{y}/R@{k}"] for k in (1, 5, 10)]
        assert 0.0 <= r[0] <= r[1] <= r[2] <= 1.0, r
        assert 1.0 <= m[f"{x}_to_{y}/median_rank"] <= m[f"num_{y}"]


def test_image_text_recipe_lit_on_demo_data(tmp_path, tiny_text_dir):
    argv = _common(tmp_path) + [
        f"model.encoders={{text: 'text:{tiny_text_dir}', image: 'image:test_efficientnet'}}",
        "model.encoder_kwargs={image: {img_size: 32}}",
        "model.freeze_encoders=[image]", "data.demo_size=20", "train.encoder_lr=0.001",
    ]
    metrics = _recipe("image_text_retrieval").main(argv)
    out = tmp_path / "out"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["frozen"] == ["image"] and saved["task"] == "retrieval"
    assert saved["split_sizes"] == {"train": 42, "validation": 6, "test": 12}  # 14 / 2 / 4 items x 3 captions
    test = saved["test"]
    assert test["num_image"] == 4 and test["num_text"] == 12 and test["chance/text_to_image/R@1"] == 0.25
    assert test["num_examples"] == test["num_unique_examples"] == 12
    _check_metric_ranges(test, "text", "image")
    assert "accuracy" in test["zero_shot"]["image"] and len(saved["history"]) == 2
    assert metrics["test"] == test
    report = (out / "report.md").read_text()
    assert "chance R@1 (image→text)" in report and "training_curves.png" in report
    for name in ("report.html", "recall_at_k.png", "retrieval_text_to_image.png", "confusion_matrix.png",
                 "config.yaml", "splits/test.csv"):
        assert (out / name).exists(), name
    # the resolved config reloads and rebuilds the initial model: the frozen tower did not move, the text one did
    cfg = load_config(str(out / "config.yaml"))
    initial = RetrievalTask(cfg).build_model(None)
    trained = DualEncoder.from_pretrained(out / "model")
    for a, b in zip(initial.encoders["image"].state_dict().values(), trained.encoders["image"].state_dict().values()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(initial.encoders["text"].parameters(),
                                                     trained.encoders["text"].parameters()))
    assert trained.encoders["image"].frozen and not trained.encoders["text"].frozen
    # the image tower was cached once, by content: one fingerprint directory
    assert len([d for d in os.listdir(tmp_path / "cache") if d.startswith("image-")]) == 1
    # the evaluate CLI on the written test split gives the run's test metrics exactly
    assert evaluate(["--model", str(out / "model"), "--data", str(out / "splits" / "test.csv"), "--task", "retrieval",
                     "--label-column", "label", "--output", str(tmp_path / "eval")]) == 0
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("text_to_image/R@1", "text_to_image/R@5", "image_to_text/R@1", "image_to_text/mAP@10",
                "text_to_image/median_rank", "rsum", "num_text", "num_image"):
        assert again[key] == pytest.approx(test[key], abs=1e-6), key


def test_audio_text_recipe_user_manifest_split_by_item(tmp_path, tiny_text_dir):
    manifest = make_demo("audio_text_pairs", size=20, root=str(tmp_path / "data"))
    # one user manifest with every pair (no split column, no item id): the recipe splits it by clip
    frame = pd.read_csv(manifest).drop(columns=["item_id", "split"]).sample(frac=1.0, random_state=0)
    frame["audio"] = [os.path.join(os.path.dirname(manifest), p) for p in frame["audio"]]
    frame.to_csv(tmp_path / "all.csv", index=False)
    argv = _common(tmp_path) + [
        f"model.encoders={{text: 'text:{tiny_text_dir}', audio: 'audio-mel:test_efficientnet'}}",
        "model.encoder_kwargs={audio: {max_seconds: 1.0}}", "data.demo=null",
        f"data.train={tmp_path / 'all.csv'}", "data.val_fraction=0.2", "data.test_fraction=0.2",
    ]
    _recipe("audio_text_retrieval").main(argv)
    out = tmp_path / "out"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["frozen"] == ["audio", "text"]
    splits = {s: set(pd.read_csv(out / "splits" / f"{s}.csv")["audio"]) for s in ("train", "validation", "test")}
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [12, 4, 4]
    assert not splits["train"] & splits["test"] and not splits["train"] & splits["validation"]
    assert saved["test"]["num_text"] == 12 and saved["test"]["num_audio"] == 4
    assert any("split by 'audio': 20 groups" in n for n in saved["split_notes"])
    assert (out / "report.md").exists() and (out / "retrieval_text_to_audio.png").exists()
    assert sorted(d.split("-")[0] for d in os.listdir(tmp_path / "cache")) == ["audio", "text"]


def test_image_audio_recipe_on_its_demo(tmp_path):
    argv = _common(tmp_path) + [
        "model.encoders={image: 'image:test_efficientnet', audio: 'audio-mel:test_efficientnet'}",
        "model.encoder_kwargs={image: {img_size: 32}, audio: {max_seconds: 1.0}}", "data.demo_size=30",
        "model.freeze_encoders=false",
    ]
    _recipe("image_audio_retrieval").main(argv)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    test = saved["test"]
    assert saved["modalities"] == ["audio", "image"] and saved["frozen"] == []
    assert test["num_audio"] == test["num_image"] == 6 and "zero_shot" not in test  # no text tower
    _check_metric_ranges(test, "audio", "image")
    assert (tmp_path / "out" / "retrieval_image_to_audio.png").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_retrieval_counts_each_test_pair_once(tmp_path, tiny_text_dir):
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), os.path.join(ROOT, "recipes", "image_text_retrieval.py"),
           *_common(tmp_path), f"model.encoders={{text: 'text:{tiny_text_dir}', image: 'image:test_efficientnet'}}",
           "model.encoder_kwargs={image: {img_size: 32}}", "data.demo_size=21", "eval.batch_size=5"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["num_processes"] == 2
    rows = saved["split_sizes"]["test"]
    assert saved["test"]["num_examples"] == saved["test"]["num_unique_examples"] == rows
    assert saved["test"]["num_text"] == rows and saved["test"]["num_image"] == rows // 3
