"""MultimodalModel with real tiny encoders: gradients, freezing, parameter groups, dropout, save/load."""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from encoders import create_encoder
from encoders.base import EncoderOutput
from fusion import create_fusion
from multimodal import ModelOutput, MultimodalModel, TaskHead

TEXTS = ["a small grey cat", "two dogs playing on grass", None, "red traffic light at night"]
PRESENT_IMAGE = [True, False, True, True]


def _images() -> list:
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (40, 36, 3), dtype=np.uint8) for _ in TEXTS]
    imgs[2] = rng.integers(0, 256, (30, 30), dtype=np.uint8)  # greyscale
    return [img if keep else None for img, keep in zip(imgs, PRESENT_IMAGE)]


_BUILT: dict[str, dict] = {}


def _encoders(tiny_text_dir: str) -> dict:
    """Fresh copies of a tiny text encoder (32-d BERT) and a tiny image encoder (256-d EfficientNet), built once."""
    if tiny_text_dir not in _BUILT:
        torch.manual_seed(0)
        _BUILT[tiny_text_dir] = {
            "text": create_encoder(f"text:{tiny_text_dir}", max_length=16),
            "image": create_encoder("image:test_efficientnet", pretrained=False, img_size=32),
        }
    return copy.deepcopy(_BUILT[tiny_text_dir])


def _model(tiny_text_dir: str, fusion_name: str, **fusion_kwargs) -> MultimodalModel:
    encoders = _encoders(tiny_text_dir)
    dims = {m: e.output_dim for m, e in encoders.items()}
    torch.manual_seed(1)
    fusion = create_fusion(fusion_name, dims, 16, **fusion_kwargs)
    return MultimodalModel(encoders, fusion=fusion, head=TaskHead(16, 3, hidden_dim=8))


def _batch(model: MultimodalModel) -> dict:
    pre = model.get_preprocessors(train=False)
    return {
        "inputs": {"text": pre["text"](TEXTS), "image": pre["image"](_images())},
        "present": {
            "text": torch.tensor([t is not None for t in TEXTS]),
            "image": torch.tensor(PRESENT_IMAGE),
        },
        "labels": torch.tensor([0, 2, 1, 2]),
    }


def _call(model: MultimodalModel, batch: dict, **extra) -> ModelOutput:
    return model(inputs=batch["inputs"], present=batch["present"], labels=batch["labels"], **extra)


def _encoder_grad_norms(model: MultimodalModel) -> dict[str, float]:
    return {
        m: sum(float(p.grad.abs().sum()) for p in enc.parameters() if p.grad is not None)
        for m, enc in model.encoders.items()
    }


ATTN = {"hidden_dim": 16, "num_heads": 2, "num_layers": 1, "dropout": 0.0}
FUSIONS = [
    ("concat", {}),
    ("late", {"combine": "learned"}),
    ("gated", {}),
    ("attention", ATTN),
    ("lowrank_tensor", {"rank": 2}),
    ("film", {}),
]


@pytest.mark.parametrize("fusion_name,kwargs", FUSIONS, ids=[f[0] for f in FUSIONS])
def test_gradients_reach_every_encoder(tiny_text_dir, fusion_name, kwargs):
    model = _model(tiny_text_dir, fusion_name, **kwargs).train()
    assert model.modalities == ["image", "text"]
    out = _call(model, _batch(model))
    assert out.loss is not None and torch.isfinite(out.loss)
    assert out.fused.shape == (4, 16)
    assert set(out.features) == {"image", "text"}
    assert out.logits.shape == (4, 3) and out.embeddings is None
    out.loss.backward()
    norms = _encoder_grad_norms(model)
    assert all(v > 0 for v in norms.values()), norms
    for name, p in model.fusion.named_parameters():
        assert p.grad is not None, name


def test_frozen_encoder_gets_no_gradient_and_no_param_group(tiny_text_dir):
    model = _model(tiny_text_dir, "concat").train()
    model.freeze_encoders(["text"])
    assert model.encoders["text"].frozen and not model.encoders["image"].frozen
    out = _call(model, _batch(model))
    out.loss.backward()
    assert all(p.grad is None for p in model.encoders["text"].parameters())
    assert _encoder_grad_norms(model)["image"] > 0
    grouped = {id(p) for g in model.parameter_groups(1e-5, 1e-3, 0.01) for p in g["params"]}
    assert not grouped & {id(p) for p in model.encoders["text"].parameters()}
    model.unfreeze_encoders()
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(KeyError, match="unknown encoder"):
        model.freeze_encoders(["audio"])


def test_parameter_groups(tiny_text_dir):
    model = _model(tiny_text_dir, "late", combine="learned")
    groups = model.parameter_groups(encoder_lr=1e-5, head_lr=1e-3, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = [id(p) for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen)) == len(names)  # every trainable parameter exactly once
    for g in groups:
        part, kind = g["name"].split(".")
        assert g["lr"] == (1e-5 if part == "encoders" else 1e-3)
        assert g["weight_decay"] == (0.05 if kind == "decay" else 0.0)
        for p in g["params"]:
            n = names[id(p)]
            assert n.startswith("encoders.") == (part == "encoders"), n
            no_decay = p.ndim <= 1 or n.endswith(".bias")
            assert no_decay == (kind == "no_decay"), n
    no_decay_names = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert "fusion.modality_logits" in no_decay_names
    assert any("LayerNorm.weight" in n for n in no_decay_names)  # BERT norms
    assert {g["name"] for g in groups} == {
        "encoders.decay",
        "encoders.no_decay",
        "head.decay",
        "head.no_decay",
    }
    torch.optim.AdamW(groups)  # accepted as-is


def test_attention_fusion_tokens_are_not_decayed(tiny_text_dir):
    model = _model(tiny_text_dir, "attention", **ATTN)
    groups = model.parameter_groups(1e-5, 1e-3, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {"fusion.cls_token", "fusion.modality_embed"} <= no_decay


def test_modality_dropout_never_drops_everything(tiny_text_dir):
    model = MultimodalModel(
        _encoders(tiny_text_dir), fusion=create_fusion("concat", {"text": 32, "image": 256}, 8), modality_dropout=0.5
    )
    torch.manual_seed(0)
    n = 4000
    present = {"image": torch.rand(n) > 0.2, "text": torch.ones(n, dtype=torch.bool)}
    present["text"][:50] = False
    present["image"][:25] = False  # 25 samples with nothing at all stay that way
    dropped = model._drop_modalities(present)
    had = present["image"] | present["text"]
    has = dropped["image"] | dropped["text"]
    assert torch.equal(has, had)  # nobody loses every modality
    for m in present:
        assert not (dropped[m] & ~present[m]).any()  # absent stays absent
    both = present["image"] & present["text"]
    rate = 1 - dropped["image"][both].float().mean().item()
    assert 0.2 < rate < 0.4  # 0.5 per modality, minus restorations when both were dropped (~0.25 expected)


def test_modality_dropout_only_in_training(tiny_text_dir, monkeypatch):
    model = _model(tiny_text_dir, "concat")
    model.modality_dropout = 0.9
    batch = _batch(model)
    seen = []
    original = model.fusion.forward

    def spy(features, present=None):
        seen.append({m: p.clone() for m, p in present.items()})
        return original(features, present)

    monkeypatch.setattr(model.fusion, "forward", spy)
    torch.manual_seed(0)
    model.eval()
    _call(model, batch)
    assert all(torch.equal(seen[0][m], batch["present"][m]) for m in seen[0])
    model.train()
    for _ in range(5):
        _call(model, batch)
    changed = any(not torch.equal(s[m], batch["present"][m]) for s in seen[1:] for m in s)
    assert changed


def test_precomputed_features_skip_their_encoder(tiny_text_dir):
    model = _model(tiny_text_dir, "gated").eval()
    batch = _batch(model)
    with torch.no_grad():
        full = _call(model, batch)
        cached = model.encode_inputs({"text": batch["inputs"]["text"]})
        partial = model(
            inputs={"image": batch["inputs"]["image"]},
            present=batch["present"],
            features={"text": cached["text"]},
        )
    assert torch.equal(full.logits, partial.logits)
    with pytest.raises(KeyError, match=r"no inputs or precomputed features for modalities \['text'\]"):
        model(inputs={"image": batch["inputs"]["image"]})
    with pytest.warns(DeprecationWarning, match=r"MultimodalModel.encode\(inputs, present\) is deprecated: use encode_inputs"):
        old = model.encode({"text": batch["inputs"]["text"]}, batch["present"])
    assert torch.equal(old["text"].pooled, cached["text"].pooled)


def test_unknown_modality_keys_raise_naming_the_model_modalities(tiny_text_dir):
    model = _model(tiny_text_dir, "concat").eval()
    batch = _batch(model)
    with pytest.raises(KeyError, match=r"present names unknown modalities \['imgae'\].*\['image', 'text'\]"):
        model(inputs=batch["inputs"], present={"imgae": batch["present"]["image"]})
    with pytest.raises(KeyError, match=r"inputs for unknown modalities \['audio'\]; the model has \['image', 'text'\]"):
        model(inputs={**batch["inputs"], "audio": {}})
    feats = model.encode_inputs(batch["inputs"])
    with pytest.raises(KeyError, match=r"features for unknown modalities \['txt'\]"):
        model(inputs={"image": batch["inputs"]["image"]}, features={"txt": feats["text"]})


def test_outputs_are_indexable_by_key(tiny_text_dir):
    model = _model(tiny_text_dir, "concat").eval()
    with torch.no_grad():
        out = _call(model, _batch(model))
    assert out["logits"] is out.logits and out["loss"] is out.loss and "fused" in out
    assert out.keys() == ["loss", "logits", "fused", "features"] and dict(out)["fused"] is out.fused
    assert "embeddings" not in out and out.get("embeddings", 3) == 3
    with pytest.raises(KeyError, match=r"no 'embeddings' \(not produced by this model\); it holds \['loss'"):
        out["embeddings"]
    with pytest.raises(KeyError, match=r"no 'logit' \(not a field\)"):
        out["logit"]


def test_model_preprocess_gives_the_batch_forward_takes(tiny_text_dir):
    model = _model(tiny_text_dir, "gated").eval()
    batch = model.preprocess({"text": TEXTS, "image": _images()})
    assert torch.equal(batch["present"]["text"], torch.tensor([t is not None for t in TEXTS]))
    assert torch.equal(batch["present"]["image"], torch.tensor(PRESENT_IMAGE))
    manual = _batch(model)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, model(inputs=manual["inputs"], present=manual["present"]).logits)
    with pytest.raises(ValueError, match="one entry per sample"):
        model.preprocess({"text": TEXTS, "image": _images()[:2]})
    with pytest.raises(KeyError, match=r"samples for unknown modalities \['audio'\]"):
        model.preprocess({"audio": [None]})


def test_positional_fusion_and_head_still_work_with_a_warning(tiny_text_dir):
    encoders = _encoders(tiny_text_dir)
    fused = create_fusion("concat", {"text": 32, "image": 256}, 4)
    with pytest.warns(DeprecationWarning, match=r"fusion, head, modality_dropout passed by position is deprecated: write fusion=..., head="):
        model = MultimodalModel(encoders, fused, TaskHead(4, 2), 0.1)
    assert model.fusion is fused and model.head.num_outputs == 2 and model.modality_dropout == 0.1
    with pytest.raises(TypeError, match="multiple values for \\['fusion'\\]"):
        MultimodalModel(encoders, fused, fusion=fused)
    with pytest.raises(TypeError):
        MultimodalModel(encoders, fused, None, 0.0, "extra")


def test_lock_freezes_all_but_the_last_groups(tiny_text_dir):
    model = _model(tiny_text_dir, "concat")
    image = model.encoders["image"]
    model.lock("image")  # open_clip's lock_image_tower(): all frozen
    assert image.frozen and not any(p.requires_grad for p in image.parameters())
    model.lock("image", unlocked_groups=1)
    trainable = [n for n, p in image.named_parameters() if p.requires_grad]
    assert trainable and len(trainable) < len(list(image.parameters()))
    assert all(not n.startswith("backbone.conv_stem") for n in trainable)  # the stem stays locked
    model.lock("text", unlocked_groups=100)  # more than it has: all of it trains
    assert all(p.requires_grad for p in model.encoders["text"].parameters())
    with pytest.raises(KeyError, match="unknown encoder"):
        model.lock("audio")
    with pytest.raises(ValueError, match="unlocked_groups must be >= 0"):
        model.lock("text", unlocked_groups=-1)


def test_construction_errors(tiny_text_dir):
    encoders = _encoders(tiny_text_dir)
    with pytest.raises(ValueError, match="do not match"):
        MultimodalModel(encoders, fusion=create_fusion("concat", {"text": 32, "audio": 8}, 4))
    with pytest.raises(ValueError, match="outputs 256 features"):
        MultimodalModel(encoders, fusion=create_fusion("concat", {"text": 32, "image": 10}, 4))
    with pytest.raises(ValueError, match="head.in_dim"):
        MultimodalModel(encoders, fusion=create_fusion("concat", {"text": 32, "image": 256}, 4), head=TaskHead(5, 2))
    headless = MultimodalModel(encoders, fusion=create_fusion("concat", {"text": 32, "image": 256}, 4))
    feats = {m: EncoderOutput(torch.randn(2, d)) for m, d in (("text", 32), ("image", 256))}
    with pytest.raises(ValueError, match="no task head"):
        headless(features=feats, labels=torch.tensor([0, 1]))


def test_preprocessors_are_picklable(tiny_text_dir):
    model = _model(tiny_text_dir, "concat")
    for train in (False, True):
        pre = model.get_preprocessors(train)
        assert set(pre) == {"image", "text"}
        restored = pickle.loads(pickle.dumps(pre))
        assert set(restored["text"](["hello"])) == set(pre["text"](["hello"]))


@pytest.mark.parametrize(
    "fusion_name,kwargs",
    [("film", {}), ("attention", ATTN)],
    ids=["film", "attention"],
)
def test_save_load_round_trip_is_bit_identical(tiny_text_dir, tmp_path, fusion_name, kwargs):
    model = _model(tiny_text_dir, fusion_name, **kwargs)
    model.modality_dropout = 0.25
    batch = _batch(model)
    # One training step so that weights and BatchNorm statistics differ from any fresh initialisation.
    model.train()
    opt = torch.optim.AdamW(model.parameter_groups(1e-3, 1e-3, 0.01))
    _call(model, batch).loss.backward()
    opt.step()
    model.freeze_encoders(["image"])
    model.eval()
    with torch.no_grad():
        before = _call(model, batch)

    model.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["format_version"] == 1 and config["model_type"] == "fused"
    assert config["fusion"]["name"] == fusion_name and config["frozen"] == ["image"]
    assert set(config["encoders"]) == {"image", "text"}
    assert (tmp_path / "saved" / "encoders" / "text").is_dir()

    loaded = MultimodalModel.from_pretrained(tmp_path / "saved")
    assert not loaded.training and loaded.encoders["image"].frozen and not loaded.encoders["text"].frozen
    assert loaded.modality_dropout == model.modality_dropout
    with torch.no_grad():
        after = _call(loaded, batch)
    assert torch.equal(after.fused, before.fused)
    assert torch.equal(after.loss, before.loss)
    assert torch.equal(after.logits, before.logits)


def test_tied_weights_are_saved_once_and_restored(tiny_text_dir, tmp_path):
    encoders = _encoders(tiny_text_dir)
    fusion = create_fusion("concat", {"text": 32, "image": 256}, 16, proj_dim=16, hidden_dim=16)
    model = MultimodalModel(encoders, fusion=fusion, head=TaskHead(16, 16))
    model.head.net[-1].weight = model.fusion.mlp[-1].weight  # share one [16, 16] matrix
    with torch.no_grad():
        model.fusion.mlp[-1].weight.normal_()
    model.eval()
    batch = _batch(model)
    with torch.no_grad():
        before = model(inputs=batch["inputs"], present=batch["present"]).logits
    model.save_pretrained(tmp_path)
    stored = load_file(str(tmp_path / "model.safetensors"))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["tied_weights"] == {"head.net.1.weight": "fusion.mlp.3.weight"}
    assert "head.net.1.weight" not in stored
    loaded = MultimodalModel.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(inputs=batch["inputs"], present=batch["present"]).logits, before)


def test_from_pretrained_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        MultimodalModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format_version": 99}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="format_version 99"):
        MultimodalModel.from_pretrained(tmp_path)


def test_attention_fusion_with_tokens_narrower_than_pooled(tiny_text_dir, tmp_path):
    import numpy as np

    image = create_encoder("image:mobilenetv3_small_050", pretrained=False, img_size=32)
    assert image.token_dim != image.output_dim  # 288-wide tokens, 1024-wide pooled output
    text = create_encoder(f"text:{tiny_text_dir}")
    encs = {"text": text, "image": image}
    dims = {m: e.output_dim for m, e in encs.items()}
    with pytest.raises(ValueError, match="token_dims"):
        MultimodalModel(encs, fusion=create_fusion("attention", dims, 16, hidden_dim=16, num_heads=2), head=TaskHead(16, 2)).eval()(
            inputs={"text": text.preprocess(["a"]), "image": image.preprocess([np.zeros((8, 8, 3), np.uint8)])}
        )
    fusion = create_fusion("attention", dims, 16, hidden_dim=16, num_heads=2, token_dims={"image": image.token_dim})
    model = MultimodalModel(encs, fusion=fusion, head=TaskHead(16, 2)).eval()
    inputs = {"text": text.preprocess(["a cat", "a dog"]), "image": image.preprocess([np.zeros((8, 8, 3), np.uint8)] * 2)}
    with torch.no_grad():
        before = model(inputs=inputs).logits
    model.save_pretrained(tmp_path / "m")
    with torch.no_grad():
        after = MultimodalModel.from_pretrained(tmp_path / "m")(inputs=inputs).logits
    assert before.shape == (2, 2) and torch.equal(before, after)
