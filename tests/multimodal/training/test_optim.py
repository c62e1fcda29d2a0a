"""Optimizer groups on timm's group functions: per parameter, the same learning rate and weight decay as the
hand-written groups they replaced (plain and layer-decayed), for a Hugging Face and a timm encoder; a wrapper
that keeps the model inside still gets encoder rates for its encoders."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from encoders import create_encoder
from fusion import create_fusion
from multimodal import MultimodalModel, TaskHead
from multimodal.models.param_groups import param_groups
from multimodal.models.unlock import encoder_layer_ids
from multimodal.training.optim import make_optimizer

ENC_LR, HEAD_LR, WD = 1e-3, 5e-2, 0.1


def _model(tiny_text_dir) -> MultimodalModel:
    encoders = {"text": create_encoder(f"text:{tiny_text_dir}", max_length=16),
                "image": create_encoder("image:test_efficientnet", pretrained=False, img_size=32)}
    fusion = create_fusion("attention", {m: e.output_dim for m, e in encoders.items()}, 16, hidden_dim=16,
                           num_heads=2, num_layers=1, dropout=0.0)
    return MultimodalModel(encoders, fusion=fusion, head=TaskHead(16, 3, hidden_dim=8))


def _declared(model: nn.Module) -> set[str]:
    names = set()
    for prefix, module in model.named_modules():
        if callable(getattr(module, "no_weight_decay", None)):
            names |= {f"{prefix}.{n}" if prefix else n for n in module.no_weight_decay()}
    return names


def _expected(model: nn.Module, layer_decay) -> dict[str, tuple[float, float]]:
    """(lr, weight decay) per trainable parameter, by the rule the hand-written groups followed."""
    declared, scale = _declared(model), {}
    for m, encoder in model.encoders.items():
        ids, top = encoder_layer_ids(encoder, coarse=False)
        for name, _ in encoder.named_parameters():
            scale[f"encoders.{m}.{name}"] = layer_decay ** (top - ids.get(name, top)) if layer_decay else 1.0
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            no_decay = p.ndim <= 1 or name.rsplit(".", 1)[-1] in ("bias", "logit_scale") or name in declared
            lr = ENC_LR * scale[name] if name.startswith("encoders.") else HEAD_LR
            out[name] = (lr, 0.0 if no_decay else WD)
    return out


def _found(model: nn.Module, groups: list[dict]) -> dict[str, tuple[float, float]]:
    names = {id(p): n for n, p in model.named_parameters()}
    found = {}
    for g in groups:
        for p in g["params"]:
            assert names[id(p)] not in found, "a parameter in two groups"
            found[names[id(p)]] = (g["lr"], g["weight_decay"])
    return found


@pytest.mark.parametrize("layer_decay", [None, 0.5])
def test_each_parameter_keeps_its_rate_and_decay(tiny_text_dir, layer_decay):
    model = _model(tiny_text_dir)
    model.encoders["image"].freeze()
    model.encoders["image"].backbone.conv_head.weight.requires_grad_(True)  # a partly unlocked timm tower
    groups = param_groups(model, ENC_LR, HEAD_LR, WD, layer_decay)
    expected = _expected(model, layer_decay)
    found = _found(model, groups)
    assert sorted(found) == sorted(expected)  # every trainable parameter once, no frozen one
    for name, (lr, decay) in expected.items():
        assert found[name][0] == pytest.approx(lr, rel=1e-12) and found[name][1] == decay, name
    assert "fusion.cls_token" in expected and expected["fusion.cls_token"][1] == 0.0  # declared by the fusion
    scales = {round(lr / ENC_LR, 9) for n, (lr, _) in expected.items() if n.startswith("encoders.text.")}
    assert len(scales) == (3 if layer_decay else 1)  # embeddings, layer 0, layer 1
    torch.optim.AdamW(groups)  # accepted as-is


class _Wrapper(nn.Module):
    """A training-only wrapper (as continual learning's EWC penalty) exposing the inner model's encoders."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def encoders(self) -> nn.ModuleDict:
        return self.model.encoders


def test_a_wrapped_model_still_trains_its_encoders_at_encoder_lr(tiny_text_dir):
    inner = _model(tiny_text_dir)
    cfg = type("Cfg", (), {"encoder_lr": ENC_LR, "head_lr": HEAD_LR, "weight_decay": WD, "layer_decay": 0.5})
    optimizer = make_optimizer(_Wrapper(inner), cfg)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    expected = _expected(inner, 0.5)
    for name, p in inner.named_parameters():
        assert lr_of[id(p)] == pytest.approx(expected[name][0], rel=1e-12), name
