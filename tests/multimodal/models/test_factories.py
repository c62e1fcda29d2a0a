"""One-call factories (`create_model`, `create_dual_encoder`) and the packaged whole-model presets."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from encoders import create_encoder, parse_spec
from multimodal import (
    DualEncoder,
    MultimodalModel,
    UnknownNameError,
    create_dual_encoder,
    create_model,
    list_presets,
)
from multimodal.models import get_preset

_BUILT: dict = {}


def _towers(tiny_text_dir: str) -> dict:
    """Tiny text, image and audio encoders (random weights), built once, copied per test."""
    if not _BUILT:
        torch.manual_seed(0)
        _BUILT.update(text=create_encoder(f"text:{tiny_text_dir}", max_length=16),
                      image=create_encoder("image:test_efficientnet", pretrained=False, img_size=32),
                      audio=create_encoder("audio-mel:test_efficientnet", pretrained=False, max_seconds=0.5))
    return copy.deepcopy(_BUILT)


def _samples() -> dict:
    rng = np.random.default_rng(0)
    return {"text": ["a red square", None, "two green dots"],
            "image": [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), None, None],
            "audio": [(rng.standard_normal(4000).astype(np.float32), 8000) for _ in range(3)]}


def test_create_model_from_specs_comes_with_its_preprocessing(tiny_text_dir):
    model = create_model({"text": f"text:{tiny_text_dir}", "image": "image:test_efficientnet"}, "gated", num_outputs=3,
                         pretrained=False, fusion_dim=16, encoder_kwargs={"image": {"img_size": 32}}, dropout=0.1)
    assert isinstance(model, MultimodalModel) and model.fusion.name == "gated" and model.head.num_outputs == 3
    assert model.fusion.config_kwargs == {"dropout": 0.1} and model.head.label_type == "single_label"
    samples = {m: v for m, v in _samples().items() if m != "audio"}
    batch = model.preprocess(samples, train=True)
    assert batch["present"]["image"].tolist() == [True, False, False]
    out = model.train()(**batch, labels=torch.tensor([0, 1, 2]))
    out.loss.backward()
    assert out.logits.shape == (3, 3) and model.encoders["text"].backbone.embeddings.word_embeddings.weight.grad is not None


def test_create_dual_encoder_with_ready_encoders_and_lock(tiny_text_dir):
    towers = _towers(tiny_text_dir)
    model = create_dual_encoder({"text": towers["text"], "audio": towers["audio"]}, embed_dim=8, projection="mlp",
                                lock={"audio": 0})
    assert isinstance(model, DualEncoder) and model.embed_dim == 8 and model.head.config_kwargs["projection"] == "mlp"
    assert model.encoders["audio"].frozen and not model.encoders["text"].frozen
    samples = _samples()
    with torch.no_grad():
        out = model.eval()(**model.preprocess({"text": samples["text"], "audio": samples["audio"]}))
    assert out.embeddings["audio"].shape == (3, 8) and out["logit_scale"] > 1


def test_every_packaged_preset_builds(tiny_text_dir):
    names = list_presets()
    assert {"text-image-concat", "text-image-clip", "text-audio-clap"} <= set(names)
    assert list_presets("*-clip") == ["image-audio-clip", "text-image-clip"]
    towers = _towers(tiny_text_dir)
    for name in names:
        preset = get_preset(name)
        assert preset.description and all(parse_spec(spec) for spec in preset.settings["encoders"].values())
        mine = {m: towers[m] for m in preset.settings["encoders"]}  # same modalities, tiny encoders
        if preset.model == "fused":
            model = create_model(mine, preset=name, num_outputs=4)
            assert model.fusion.name == preset.settings["fusion"] and model.head.num_outputs == 4
        else:
            model = create_dual_encoder(mine, preset=name)
            assert model.embed_dim == preset.settings["embed_dim"]
        assert model.modalities == sorted(preset.settings["encoders"])


def test_a_preset_as_published_uses_its_own_encoders():
    model = create_model(preset="text-image-concat", num_outputs=2, pretrained=False, head_dropout=0.0)
    assert {m: e.spec for m, e in model.encoders.items()} == get_preset("text-image-concat").settings["encoders"]
    assert model.head.hidden_dim == 128 and model.head.dropout_p == 0.0  # preset value, then the override


def test_factory_errors_name_the_fix(tmp_path, tiny_text_dir):
    towers = _towers(tiny_text_dir)
    with pytest.raises(UnknownNameError, match=r"unknown preset 'text-image-clp' \(did you mean 'text-image-clip'\?\)"):
        create_dual_encoder(preset="text-image-clp")
    with pytest.raises(ValueError, match="preset 'text-image-clip' builds a dual_encoder model; use create_dual_encoder"):
        create_model(preset="text-image-clip", num_outputs=2)
    with pytest.raises(ValueError, match="num_outputs is required"):
        create_model({"text": towers["text"]})
    with pytest.raises(ValueError, match="give encoders="):
        create_dual_encoder(embed_dim=4)
    with pytest.raises(ValueError, match=r"encoder_kwargs names \['audio'\]"):
        create_model({"text": f"text:{tiny_text_dir}"}, num_outputs=2, encoder_kwargs={"audio": {}})
    with pytest.raises(TypeError, match=r"encoders\['text'\] must be a spec string"):
        create_model({"text": 3}, num_outputs=2)
    custom = tmp_path / "mine.yaml"
    custom.write_text("model: fused\nencoders: {text: 'text:x'}\nfusion: concat\nfuson_dim: 8\n")
    with pytest.raises(ValueError, match=r"mine.yaml: unknown field\(s\) \['fuson_dim'\] for a fused preset"):
        create_model(preset=str(custom), num_outputs=2)
    custom.write_text("model: fused\nencoders: {text: 'text:x'}\nfusion: late\nfusion_dim: 8\nnum_outputs: 5\n")
    model = create_model({"text": towers["text"]}, preset=str(custom))  # a preset file of one's own
    assert model.fusion.name == "late" and model.head.num_outputs == 5
