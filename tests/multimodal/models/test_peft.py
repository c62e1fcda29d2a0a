"""LoRA through peft: what trains, family defaults, adapters-only saving, restore from the base spec, merging."""

from __future__ import annotations

import os

import pytest
import torch

from encoders import create_encoder
from fusion import create_fusion
from multimodal import MultimodalModel, TaskHead, load_model
from multimodal.config.schema import PeftConfig
from multimodal.models.peft import apply_peft, default_targets, merge_adapters


def _model(tiny_text_dir: str) -> MultimodalModel:
    torch.manual_seed(0)
    encoders = {"text": create_encoder(f"text:{tiny_text_dir}"),  # pretrained = the directory's saved weights
                "image": create_encoder("image:tf_efficientnet_lite0", img_size=32)}
    fusion = create_fusion("concat", {m: e.output_dim for m, e in encoders.items()}, 16)
    return MultimodalModel(encoders, fusion=fusion, head=TaskHead(16, 3))


def _batch(model: MultimodalModel) -> dict:
    gen = torch.Generator().manual_seed(1)
    images = [torch.randint(0, 255, (40, 40, 3), generator=gen, dtype=torch.uint8).numpy() for _ in range(4)]
    return {"inputs": {"text": model.encoders["text"].preprocess(["a b", "c", "d e f", "g"]),
                       "image": model.encoders["image"].preprocess(images)},
            "labels": torch.tensor([0, 1, 2, 0])}


def test_only_adapters_and_heads_train_and_bn_stats_stay(tiny_text_dir):
    model = apply_peft(_model(tiny_text_dir), PeftConfig(r=4))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    enc_trainable = [n for n in trainable if n.startswith("encoders.")]
    assert enc_trainable and all("lora_" in n for n in enc_trainable)
    assert any(n.startswith("fusion.") for n in trainable) and any(n.startswith("head.") for n in trainable)
    bn = dict(model.encoders["image"].named_modules())["backbone.base_model.model.bn1"]
    before = bn.running_mean.clone()
    model.train()
    assert not bn.training  # frozen BatchNorm statistics do not drift
    out = model(**_batch(model))
    out.loss.backward()
    assert torch.equal(bn.running_mean, before)
    grads = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert any("lora_A" in n for n in grads) or any("lora_B" in n for n in grads)


def test_family_defaults(tiny_text_dir, tiny_audio_dir):
    assert default_targets(create_encoder(f"text:{tiny_text_dir}")) == ["dense", "key", "query", "value"]
    assert default_targets(create_encoder("image:test_vit", pretrained=False)) == ["fc1", "fc2", "proj", "qkv"]
    assert default_targets(create_encoder("image:tf_efficientnet_lite0", pretrained=False)) == ["conv_pwl"]
    assert default_targets(create_encoder("audio-mel:tf_efficientnet_lite0", pretrained=False)) == ["conv_pwl"]
    audio = default_targets(create_encoder(f"audio:{tiny_audio_dir}"))
    assert {"q_proj", "k_proj", "v_proj", "out_proj"} <= set(audio)


def test_targets_that_match_nothing_name_the_key_and_candidates(tiny_text_dir):
    with pytest.raises(ValueError, match=r"model\.peft\.target_modules: \['nope'\].*candidates: .*query"):
        apply_peft(_model(tiny_text_dir), PeftConfig(target_modules=["nope"], modalities=["text"]))
    with pytest.raises(ValueError, match=r"model\.peft\.target_modules\.image: \['qkv'\].*conv_pwl"):
        apply_peft(_model(tiny_text_dir), PeftConfig(target_modules={"image": ["qkv"]}))


def test_save_adapters_only_reload_from_spec_and_merge(tiny_text_dir, tmp_path):
    plain = _model(tiny_text_dir)
    plain.save_pretrained(tmp_path / "full")
    model = apply_peft(_model(tiny_text_dir), PeftConfig(r=4))
    with torch.no_grad():  # train the adapters a little (B starts at zero: LoRA would be a no-op)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    model.eval()
    batch = _batch(model)
    with torch.no_grad():
        expected = model(inputs=batch["inputs"]).logits
    model.save_pretrained(tmp_path / "lora")
    full_size = os.path.getsize(tmp_path / "full" / "model.safetensors")
    lora_size = os.path.getsize(tmp_path / "lora" / "model.safetensors")
    assert lora_size < 0.05 * full_size
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "lora" / "model.safetensors"))
    assert all("lora_" in k for k in saved if k.startswith("encoders."))
    reloaded = load_model(tmp_path / "lora")
    assert set(reloaded.peft_info) == {"image", "text"}
    with torch.no_grad():
        assert torch.allclose(reloaded(inputs=batch["inputs"]).logits, expected, atol=1e-6)
    merged = merge_adapters(reloaded)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        assert torch.allclose(merged(inputs=batch["inputs"]).logits, expected, atol=1e-4)
    merged.save_pretrained(tmp_path / "merged")
    again = load_model(tmp_path / "merged")  # a plain model: full weights, no peft entry
    assert not getattr(again, "peft_info", None)
    with torch.no_grad():
        assert torch.allclose(again(inputs=batch["inputs"]).logits, expected, atol=1e-4)


def test_changed_base_weights_are_refused(tiny_text_dir, tmp_path):
    model = apply_peft(_model(tiny_text_dir), PeftConfig(r=2, modalities=["text"]))
    model.save_pretrained(tmp_path / "lora")
    import json

    config = json.loads((tmp_path / "lora" / "config.json").read_text())
    config["peft"]["text"]["base_sha256"] = "0" * 64
    (tmp_path / "lora" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="differ from those the adapters were trained on"):
        load_model(tmp_path / "lora")
