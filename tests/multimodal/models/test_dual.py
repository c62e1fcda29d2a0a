"""DualEncoder: one modality embedded alone, any pair aligned, InfoNCE, freezing, save/load (also old folders)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from encoders import create_encoder
from multimodal import DualEncoder, MultimodalModel, load_model
from multimodal.models import ClipLoss, ContrastiveHead, clip_loss

_BUILT: dict = {}


def _encoders(tiny_text_dir: str, audio: bool = False) -> dict:
    key = (tiny_text_dir, audio)
    if key not in _BUILT:
        torch.manual_seed(0)
        encs = {"text": create_encoder(f"text:{tiny_text_dir}", max_length=16),
                "image": create_encoder("image:test_efficientnet", pretrained=False, img_size=32)}
        if audio:
            encs["audio"] = create_encoder("audio-mel:test_efficientnet", pretrained=False, max_seconds=0.5)
        _BUILT[key] = encs
    return copy.deepcopy(_BUILT[key])


def _inputs(model: DualEncoder) -> dict:
    rng = np.random.default_rng(0)
    raw = {
        "text": ["a red square", "a blue circle", "two green dots"],
        "image": [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(3)],
        "audio": [(rng.standard_normal(4000).astype(np.float32), 8000) for _ in range(3)],
    }
    pre = model.get_preprocessors(False)
    return {m: pre[m](raw[m]) for m in model.modalities}


def test_encode_one_modality_alone(tiny_text_dir):
    model = DualEncoder(_encoders(tiny_text_dir), embed_dim=8).eval()
    inputs = _inputs(model)
    text = model.encode("text", inputs["text"])  # no image needed
    assert text.shape == (3, 8)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    with torch.no_grad():
        feats = model.encoders["image"](inputs["image"])
    torch.testing.assert_close(model.encode("image", features=feats), model.encode("image", inputs["image"]))
    torch.testing.assert_close(model.encode("image", features=feats.pooled), model.encode("image", inputs["image"]))
    out = model(inputs={"text": inputs["text"]})
    assert out.loss is None and set(out.embeddings) == {"text"}
    with pytest.raises(KeyError, match="no 'audio' tower"):
        model.encode("audio", inputs["text"])


def test_forward_loss_is_infonce_and_trains_both_towers(tiny_text_dir):
    model = DualEncoder(_encoders(tiny_text_dir), embed_dim=8, gather=False).train()
    inputs = _inputs(model)
    torch.manual_seed(0)
    out = model(inputs=inputs)
    torch.manual_seed(0)
    emb = {m: model.encode(m, inputs[m]) for m in ("image", "text")}
    torch.testing.assert_close(out.loss, clip_loss(emb["image"], emb["text"], model.logit_scale.exp(), gather=False))
    # open_clip's shape: the output carries the exponentiated scale, which ClipLoss takes as it is
    torch.testing.assert_close(out["logit_scale"], model.logit_scale.exp())
    loss = ClipLoss(gather=False)(out["embeddings"]["image"], out["embeddings"]["text"], out["logit_scale"])
    torch.testing.assert_close(loss, out.loss)
    assert out.logits is None and set(out.embeddings) == {"image", "text"}
    out.loss.backward()
    for m in ("image", "text"):
        assert sum(float(p.grad.abs().sum()) for p in model.encoders[m].parameters() if p.grad is not None) > 0, m
    assert model.head.logit_scale.grad is not None
    groups = model.parameter_groups(1e-5, 1e-3, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert "head.logit_scale" in no_decay


def test_frozen_tower_gets_no_gradient(tiny_text_dir):
    model = DualEncoder(_encoders(tiny_text_dir), embed_dim=8, gather=False).train()
    model.freeze_encoders(["image"])
    model(inputs=_inputs(model)).loss.backward()
    assert all(p.grad is None for p in model.encoders["image"].parameters())
    assert any(p.grad is not None for p in model.encoders["text"].parameters())


def test_three_towers_align_any_pair(tiny_text_dir):
    model = DualEncoder(_encoders(tiny_text_dir, audio=True), embed_dim=8, gather=False).eval()
    inputs = _inputs(model)
    with torch.no_grad():
        image, audio = model.encode("image", inputs["image"]), model.encode("audio", inputs["audio"])
        out = model(inputs={"image": inputs["image"], "audio": inputs["audio"]})
    assert (image @ audio.t()).shape == (3, 3)
    torch.testing.assert_close(out.loss, clip_loss(audio, image, log_logit_scale=model.logit_scale, gather=False))


def test_save_load_round_trip_and_load_model_dispatch(tiny_text_dir, tmp_path):
    model = DualEncoder(_encoders(tiny_text_dir), embed_dim=8, projection="mlp", hidden_dim=12)
    inputs = _inputs(model)
    model.train()
    opt = torch.optim.AdamW(model.parameter_groups(1e-3, 1e-3, 0.0))
    model(inputs=inputs).loss.backward()
    opt.step()
    model.freeze_encoders(["text"]).eval()
    with torch.no_grad():
        before = model(inputs=inputs)
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model_type"] == "dual_encoder" and config["head"]["projection"] == "mlp"
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, DualEncoder) and loaded.encoders["text"].frozen and not loaded.training
    with torch.no_grad():
        after = loaded(inputs=inputs)
    assert torch.equal(after.loss, before.loss)
    assert all(torch.equal(after.embeddings[m], before.embeddings[m]) for m in before.embeddings)
    assert isinstance(DualEncoder.from_pretrained(tmp_path / "m"), DualEncoder)
    with pytest.raises(TypeError, match="holds a DualEncoder, not a MultimodalModel"):
        MultimodalModel.from_pretrained(tmp_path / "m")


def test_folders_saved_before_dual_encoder_still_load(tiny_text_dir, tmp_path):
    """A contrastive model saved as MultimodalModel + ContrastiveFusion (format 1, no model_type) loads."""
    model = DualEncoder(_encoders(tiny_text_dir), embed_dim=8).eval()
    model.save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    head = config.pop("head")
    config.pop("model_type")
    config["fusion"] = {"name": "contrastive", "input_dims": head["input_dims"], "output_dim": head["embed_dim"],
                        "kwargs": {k: head[k] for k in ("projection", "hidden_dim", "dropout", "init_logit_scale",
                                                        "max_logit_scale", "gather")}}
    config["head"] = None
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    state = load_file(str(tmp_path / "old" / "model.safetensors"))
    save_file({("fusion." + k[5:] if k.startswith("head.") else k): v for k, v in state.items()}, str(tmp_path / "old" / "model.safetensors"))
    loaded = load_model(tmp_path / "old")
    inputs = _inputs(model)
    assert isinstance(loaded, DualEncoder)
    with torch.no_grad():
        assert torch.equal(loaded.encode("text", inputs["text"]), model.encode("text", inputs["text"]))


def test_construction_errors(tiny_text_dir):
    encoders = _encoders(tiny_text_dir)
    with pytest.raises(ValueError, match="expects"):
        DualEncoder(encoders, head=ContrastiveHead({"text": 32, "image": 7}, 4))
    with pytest.raises(ValueError, match="either a head or head options"):
        DualEncoder(encoders, head=ContrastiveHead({"text": 32, "image": 256}, 4), projection="mlp")
    with pytest.warns(DeprecationWarning, match=r"DualEncoder\(...\) with head passed by position is deprecated"):
        model = DualEncoder(encoders, ContrastiveHead({"text": 32, "image": 256}, 4))
    assert model.embed_dim == 4


def test_unknown_present_key_raises(tiny_text_dir):
    model = DualEncoder(_encoders(tiny_text_dir), embed_dim=8, gather=False).eval()
    inputs = _inputs(model)
    with pytest.raises(KeyError, match=r"present for unknown modalities \['txt'\]; the model has \['image', 'text'\]"):
        model(inputs=inputs, present={"txt": torch.tensor([True, False, True])})
