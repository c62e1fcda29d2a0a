"""The Predictor: the same decoding and preprocessing as training, every input form, batching, absent
modalities, errors that name the row and field, retrieval against a gallery, and safe loading."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

import multimodal
from multimodal.data.dataset import MultimodalDataset
from multimodal.data.loading import Collator, make_dataloader
from multimodal.data.manifest import read_manifest
from multimodal.deploy import BadInputError, DeployError, Predictor
from multimodal.deploy.runtime import softmax
from multimodal.training.predict import predict


def test_predictor_is_exported_from_the_package():
    assert multimodal.Predictor is Predictor


def test_probabilities_equal_the_training_prediction_loop(demo_run):
    """Same manifest through the dataset + collator + `predict` (what evaluation uses) and through the Predictor."""
    from accelerate import Accelerator

    model_dir, test_csv = os.path.join(demo_run, "model"), os.path.join(demo_run, "splits", "test.csv")
    predictor = Predictor.from_pretrained(model_dir, batch_size=5)
    model = predictor.backend.model
    rows = read_manifest(test_csv)
    dataset = MultimodalDataset(rows, {"text": "text", "image": "image"}, label_type=None,
                                base_dir=os.path.dirname(test_csv), source=test_csv)
    loader = make_dataloader(dataset, Collator(model.get_preprocessors(False), None), batch_size=7, num_workers=0)
    accelerator = Accelerator(cpu=True)
    expected = softmax(predict(model, accelerator.prepare(loader), accelerator, batch_loss=False)["logits"].numpy())
    preds = predictor.predict([{"text": r["text"], "image": r["image"]} for r in rows],
                              base_dir=os.path.dirname(test_csv))
    names = predictor.labels
    got = np.array([[p["probabilities"][n] for n in names] for p in preds])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert [p["label"] for p in preds] == [names[i] for i in expected.argmax(1)]


def _wav_bytes(wave: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="WAV", subtype="FLOAT")
    return buf.getvalue()


@pytest.mark.parametrize("folder", ["fused_dir", "fused_onnx"])
def test_every_input_form_gives_the_same_prediction(request, tmp_path, folder):
    predictor = Predictor.from_pretrained(request.getfixturevalue(folder))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    png = (tmp_path / "a.png").read_bytes()
    wave = (0.2 * rng.standard_normal(6000)).astype(np.float32)
    sf.write(tmp_path / "a.wav", wave, 16000, subtype="FLOAT")
    forms = [
        {"text": "a red square", "image": str(tmp_path / "a.png"), "audio": str(tmp_path / "a.wav")},
        {"text": "a red square", "image": "a.png", "audio": "a.wav"},  # relative to base_dir
        {"text": "a red square", "image": Image.fromarray(pixels), "audio": (wave, 16000)},
        {"text": "a red square", "image": pixels, "audio": {"array": wave, "sampling_rate": 16000}},
        {"text": "a red square", "image": {"bytes": png}, "audio": {"bytes": _wav_bytes(wave, 16000)}},
    ]
    preds = predictor.predict(forms, base_dir=str(tmp_path))
    for p in preds[1:]:
        assert p["label"] == preds[0]["label"]
        for k, v in p["probabilities"].items():
            assert v == pytest.approx(preds[0]["probabilities"][k], abs=1e-6)
    assert sum(preds[0]["probabilities"].values()) == pytest.approx(1.0)


def test_batching_and_absent_modalities(fused_dir):
    rows = [{"text": f"caption {i}" * (i + 1)} if i % 3 else {"audio": (np.ones(800 * (i + 1), np.float32), 8000)}
            for i in range(9)]
    rows[4] = {"text": None, "image": np.zeros((8, 8, 3), np.uint8), "audio": float("nan")}  # missing cells
    one = Predictor.from_pretrained(fused_dir, batch_size=1).predict(rows)
    many = Predictor.from_pretrained(fused_dir, batch_size=4).predict(rows)
    for a, b in zip(one, many):
        assert a["label"] == b["label"]
        assert max(abs(a["probabilities"][k] - b["probabilities"][k]) for k in a["probabilities"]) < 1e-5
    # an absent modality changes the prediction input: it is not silently filled from another row
    assert one[0]["probabilities"] != one[3]["probabilities"]


def test_bad_inputs_name_the_row_and_field(tmp_path, fused_dir):
    predictor = Predictor.from_pretrained(fused_dir)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    cases = [
        ({"text": "ok", "imgae": "x.png"}, "row 2: unknown field(s) ['imgae']"),
        ({"text": 42}, "row 2: field 'text' must be a string"),
        ({"image": str(tmp_path / "missing.png")}, f"row 2: field 'image' (file {tmp_path / 'missing.png'})"),
        ({"image": str(tmp_path / "broken.png")}, "broken.png"),
        ({"image": {"bytes": b"garbage"}}, "row 2: field 'image': UnidentifiedImageError"),
        ({"audio": {"bytes": b"RIFF...."}}, "row 2: field 'audio'"),
        ({"text": "", "image": None}, "row 2: no input given"),
        ("just a string", "row 2: expected a mapping"),
    ]
    for bad, message in cases:
        with pytest.raises(BadInputError) as info:
            predictor.predict([{"text": "fine"}, bad])
        assert message in str(info.value), (bad, str(info.value))
        assert info.value.row == 1
    results = list(predictor.predict_iter([{"text": "a"}, {"text": 1}, {"text": "b"}, {}], on_bad_row="skip"))
    assert [r[0] for r in results] == [0, 1, 2, 3]
    assert [r[1] is None for r in results] == [False, True, False, True]
    assert "row 2" in results[1][2] and "row 4" in results[3][2]


def test_a_sample_that_fails_preprocessing_is_named_and_skippable(fused_dir):
    predictor = Predictor.from_pretrained(fused_dir, batch_size=8)
    rows = [{"text": "a"}, {"image": np.zeros((2, 3, 4, 5), np.uint8)}, {"text": "b"}]
    with pytest.raises(BadInputError, match="row 1: field 'image'"):
        predictor.predict(rows)
    results = list(predictor.predict_iter(rows, on_bad_row="skip"))
    assert results[0][1] is not None and results[1][1] is None and results[2][1] is not None


@pytest.mark.parametrize("folder", ["dual_dir", "dual_onnx"])
def test_embeddings_and_top_k_search(request, folder, dual_model):
    predictor = Predictor.from_pretrained(request.getfixturevalue(folder))
    assert predictor.is_two_tower and predictor.task == "retrieval"
    captions = ["a red circle", "a blue square", "three green dots", "a yellow star"]
    gallery = predictor.index(captions, "text")
    hits = predictor.search(captions, "text", gallery, k=2)
    assert [h[0]["id"] for h in hits] == captions  # every caption finds itself first (cosine 1)
    assert all(h[0]["score"] == pytest.approx(1.0, abs=1e-5) and h[0]["score"] >= h[1]["score"] for h in hits)
    images = [np.full((16, 16, 3), c, np.uint8) for c in (0, 90, 180)]
    scores = predictor.embed("image", images) @ gallery.embeddings.T
    top = predictor.search(images, "image", gallery, k=3)
    assert [[e["id"] for e in row] for row in top] == [[captions[j] for j in np.argsort(-s, kind="stable")[:3]]
                                                        for s in scores]
    with torch.no_grad():
        ref = dual_model.encode("image", dual_model.encoders["image"].preprocess(images)).numpy()
    np.testing.assert_allclose(predictor.embed("image", images), ref, atol=1e-4)
    pred = predictor.predict({"text": "a red circle", "image": images[0]})
    assert sorted(pred["embedding"]) == ["image", "text"] and len(pred["embedding"]["text"]) == 8


def test_classifier_refuses_embed_and_towers_refuse_unknown(fused_dir, dual_dir):
    with pytest.raises(DeployError, match="two-tower"):
        Predictor.from_pretrained(fused_dir).embed("text", ["x"])
    with pytest.raises(DeployError, match="no 'audio' tower"):
        Predictor.from_pretrained(dual_dir).embed("audio", ["x"])


def test_loading_is_safe_by_default(tmp_path, fused_dir):
    import shutil

    remote = tmp_path / "remote"
    shutil.copytree(fused_dir, remote)
    config = json.loads((remote / "config.json").read_text())
    config["encoders"]["text"]["trust_remote_code"] = True
    (remote / "config.json").write_text(json.dumps(config))
    with pytest.raises(DeployError, match="trust_remote_code"):
        Predictor.from_pretrained(remote)
    with pytest.raises(DeployError, match="neither a saved model"):
        Predictor.from_pretrained(tmp_path)
    with pytest.raises(DeployError, match="does not exist"):
        Predictor.from_pretrained(tmp_path / "nope")


def test_the_predictor_runs_its_own_convolutional_model_channels_last(fused_dir):
    """A folder the predictor loads runs in channels_last: the same probabilities as NCHW within float rounding."""
    from multimodal.deploy.backends import TorchBackend
    from multimodal.deploy.loading import load_source_model

    rows = [{"image": np.full((40, 48, 3), 90 + 40 * i, dtype=np.uint8), "text": f"item {i}"} for i in range(3)]
    predictor = Predictor.from_pretrained(fused_dir)
    stem = predictor.backend.model.encoders["image"].backbone.conv_stem.weight
    assert stem.is_contiguous(memory_format=torch.channels_last) and not stem.is_contiguous()
    model, labels, _ = load_source_model(fused_dir)
    nchw = Predictor(TorchBackend(model, labels))
    fast, plain = predictor.predict(rows), nchw.predict(rows)
    probs = [[p["probabilities"][k] for k in sorted(p["probabilities"])] for p in fast]
    np.testing.assert_allclose(probs, [[p["probabilities"][k] for k in sorted(p["probabilities"])] for p in plain],
                               rtol=0, atol=1e-5)
