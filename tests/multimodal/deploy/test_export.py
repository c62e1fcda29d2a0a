"""Export: ONNX Runtime (and torch.export) against PyTorch on every encoder family, dynamic axes, towers, labels on
the demo test split, no model code at run time, and loading that is safe by default."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from deploy_helpers import LABELS, family_encoder, fused
from PIL import Image

from multimodal.data.manifest import read_manifest
from multimodal.deploy import DeployError, Predictor
from multimodal.deploy.backends import TorchBackend
from multimodal.deploy.export import export_folder, export_model
from multimodal.deploy.runtime import ExportedModel

FAMILIES = ["text", "timm-cnn", "timm-vit", "audio-mel", "hf-audio"]
TOL = 1e-4


def fresh_samples(modality: str, n: int, seed: int) -> list:
    """Raw inputs unlike the export's probes: other sizes, modes and sample rates."""
    rng = np.random.default_rng(seed)
    if modality == "text":
        return [" ".join(["word"] * int(rng.integers(1, 30))) + f" {i}" for i in range(n)]
    if modality == "image":
        return [Image.fromarray(rng.integers(0, 256, (int(rng.integers(10, 120)), int(rng.integers(10, 120)), 3),
                                             dtype=np.uint8)) for _ in range(n)]
    return [(rng.standard_normal(int(rng.integers(3000, 40000))).astype(np.float32), int(rng.choice([8000, 16000, 44100])))
            for _ in range(n)]


def max_logit_diff(model, folder: str, batch: dict) -> tuple[float, float]:
    """(graph-only, end-to-end) max |logits difference| on one batch of raw samples."""
    torch_side, exported = TorchBackend(model), ExportedModel(folder)
    present = {m: np.array([s is not None for s in v]) for m, v in batch.items()}
    t_in = {m: torch_side.preprocess(m, v) for m, v in batch.items()}
    ref = torch_side.logits(t_in, present)
    same = exported.logits({m: {k: t.numpy() for k, t in d.items()} for m, d in t_in.items()}, present)
    own = exported.logits({m: exported.preprocess(m, v) for m, v in batch.items()}, present)
    return float(np.abs(same - ref).max()), float(np.abs(own - ref).max())


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_logits_match_pytorch_for_every_encoder_family(tmp_path, family, tiny_text_dir, tiny_audio_dir):
    encoder = family_encoder(family, tiny_text_dir, tiny_audio_dir)
    model = fused({encoder.modality: encoder}, seed=3)
    manifest = export_model(model, tmp_path / "onnx", "onnx", labels=LABELS)
    check = manifest["verification"]
    assert check["graph_max_abs_diff"] <= TOL and check["end_to_end_max_abs_diff"] <= TOL, check
    for n, seed in ((1, 10), (7, 11)):  # batch sizes the export never saw
        graph, e2e = max_logit_diff(model, str(tmp_path / "onnx"), {encoder.modality: fresh_samples(encoder.modality, n, seed)})
        assert graph <= TOL and e2e <= TOL, (family, n, graph, e2e)
    shapes = {i["key"]: i["shape"] for i in manifest["graphs"]["model"]["inputs"]}
    assert all(shape[0] == "batch" for shape in shapes.values())
    if family == "text":
        assert shapes["input_ids"][1] == shapes["attention_mask"][1] == "text_length"
    if family == "hf-audio":
        assert shapes["input_values"][1] == "audio_length"
    if family in ("timm-cnn", "timm-vit"):
        assert all(isinstance(d, int) for d in shapes["pixel_values"][1:])


@pytest.mark.slow
def test_fused_graph_handles_missing_modalities(fused_model, fused_onnx):
    rows = 6
    batch = {m: fresh_samples(m, rows, seed=20 + i) for i, m in enumerate(fused_model.modalities)}
    for i, m in enumerate(fused_model.modalities):  # row r misses modality r % 3; row 5 has only audio
        batch[m] = [None if r % 3 == i or (r == 5 and m != "audio") else s for r, s in enumerate(batch[m])]
    graph, e2e = max_logit_diff(fused_model, fused_onnx, batch)
    assert graph <= TOL and e2e <= TOL
    config = json.load(open(os.path.join(fused_onnx, "deploy.json")))
    assert config["labels"] == LABELS and config["task"] == "single_label" and config["modalities"] == ["audio", "image", "text"]
    assert sorted(os.listdir(fused_onnx)) == ["deploy.json", "model.onnx", "text"]  # tokenizer beside the graph


@pytest.mark.slow
def test_each_tower_is_its_own_graph(dual_model, dual_onnx):
    exported, torch_side = ExportedModel(dual_onnx), TorchBackend(dual_model)
    assert sorted(exported.config["graphs"]) == ["image", "text"]
    for m in ("image", "text"):
        values = fresh_samples(m, 5, seed=30)
        ours = exported.embed(m, exported.preprocess(m, values))
        ref = torch_side.embed(m, torch_side.preprocess(m, values))
        assert ours.shape == (5, 8)
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
        assert np.abs(ours - ref).max() <= TOL


@pytest.mark.slow
def test_torch_export_format_runs_only_when_trusted(tmp_path, dual_model):
    folder = tmp_path / "pt2"
    manifest = export_model(dual_model, folder, "torch-export")
    assert manifest["graphs"]["text"]["file"] == "text.pt2"
    assert manifest["verification"]["end_to_end_max_abs_diff"] <= TOL
    with pytest.raises(DeployError, match="pickle"):
        Predictor.from_pretrained(folder)
    predictor = Predictor.from_pretrained(folder, trust_remote_code=True)
    for n in (3, 1):
        values = fresh_samples("text", n, seed=40)
        np.testing.assert_allclose(predictor.embed("text", values), TorchBackend(dual_model).embed(
            "text", dual_model.encoders["text"].preprocess(values)), atol=TOL)


@pytest.mark.slow
def test_exported_demo_classifier_predicts_the_same_labels_on_the_demo_test_split(tmp_path, demo_run):
    model_dir, test_csv = os.path.join(demo_run, "model"), os.path.join(demo_run, "splits", "test.csv")
    export_folder(model_dir, str(tmp_path / "onnx"))
    rows = [{"text": r["text"], "image": r["image"]} for r in read_manifest(test_csv)]
    torch_preds = Predictor.from_pretrained(model_dir).predict(rows)
    onnx_preds = Predictor.from_pretrained(tmp_path / "onnx").predict(rows)
    assert len(rows) >= 10
    assert [p["label"] for p in onnx_preds] == [p["label"] for p in torch_preds]
    for a, b in zip(onnx_preds, torch_preds):
        assert max(abs(a["probabilities"][k] - b["probabilities"][k]) for k in a["probabilities"]) < 1e-4


def test_exported_folder_runs_no_torch_model_code(fused_onnx, monkeypatch):
    """With every nn.Module call and torchaudio's resampler disabled, the exported folder still predicts."""
    import torchaudio.functional

    def refuse(*args, **kwargs):
        raise AssertionError("torch model code ran")

    predictor = Predictor.from_pretrained(fused_onnx)
    monkeypatch.setattr(torch.nn.Module, "__call__", refuse)
    monkeypatch.setattr(torchaudio.functional, "resample", refuse)
    rows = [{"text": "hi", "image": fresh_samples("image", 1, 1)[0], "audio": (np.ones(9000, np.float32), 44100)},
            {"audio": (np.ones(500, np.float32), 8000)}]
    preds = predictor.predict(rows)
    assert [sorted(p) for p in preds] == [["label", "probabilities", "score"]] * 2
    with pytest.raises(AssertionError, match="torch model code ran"):  # the guard itself works
        torch.nn.Linear(2, 2)(torch.zeros(1, 2))


def test_export_refuses_a_model_without_a_head_and_a_bad_format(tmp_path, fused_model):
    from multimodal import MultimodalModel

    headless = MultimodalModel(dict(fused_model.encoders), fusion=fused_model.fusion, head=None)
    with pytest.raises(DeployError, match="no task head"):
        export_model(headless, tmp_path / "x")
    with pytest.raises(DeployError, match="unknown export format"):
        export_model(fused_model, tmp_path / "y", fmt="tflite")
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "y")
