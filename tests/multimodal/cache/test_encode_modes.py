"""How the frozen tower runs for the cache: channels_last equal to NCHW, precision in the cache key, the bf16 check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from encoders.base import Encoder, EncoderOutput
from multimodal.cache import FeatureCache, encode_batch, encode_items
from multimodal.cache import modes as modes_module


class _Pixels:
    """Picklable preprocessor: grey image -> {"pixels": float [B, 16]}."""

    def __call__(self, raw: list) -> dict:
        rows = [np.asarray((img or Image.new("L", (4, 4))).convert("L").resize((4, 4)), dtype=np.float32) / 255.0
                for img in raw]
        return {"pixels": torch.from_numpy(np.stack(rows)).flatten(1)}


class OffsetTower(Encoder):
    """A linear tower whose output rides on a large `offset` that is subtracted again: exact in fp32, and in bf16
    (8 bits of mantissa) for offset 0 only."""

    modality = "image"

    def __init__(self, offset: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.offset, self.output_dim, self.spec = offset, 3, f"image:offset-{offset}"
        self.backbone = torch.nn.Linear(16, 3)
        with torch.no_grad():
            self.backbone.bias += offset

    def forward(self, inputs: dict) -> EncoderOutput:
        return EncoderOutput(self.backbone(inputs["pixels"]) - self.offset, None, None)

    def get_preprocessor(self, train: bool = False) -> _Pixels:
        return _Pixels()

    def get_config(self) -> dict:
        return {"spec": self.spec}

    def preprocess_config(self) -> dict:
        return {"size": 4}


def test_channels_last_fill_equals_nchw_and_leaves_the_weights_contiguous():
    from encoders import create_encoder

    torch.manual_seed(0)
    enc = create_encoder("image:test_efficientnet", pretrained=False, img_size=32).eval()
    raw = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 48, 3), dtype=np.uint8)) for i in range(3)]
    preprocess = enc.get_preprocessor(train=False)
    with torch.no_grad():
        nchw = enc(preprocess(raw))
    stored = []
    encode_items(enc, [(f"k{i}", img) for i, img in enumerate(raw)], lambda keys, out: stored.append(out),
                 batch_size=2, shard_size=8, loader=lambda modality, source: source)
    assert enc.backbone.conv_stem.weight.is_contiguous()  # a model saved after the fill stores plain tensors
    with modes_module.fill_layout(enc):
        assert not enc.backbone.conv_stem.weight.is_contiguous()  # the fill ran channels_last
        direct = encode_batch(enc, preprocess, raw, torch.device("cpu"))
    torch.testing.assert_close(stored[0].pooled, nchw.pooled, rtol=0, atol=1e-5)
    torch.testing.assert_close(direct.tokens, nchw.tokens, rtol=0, atol=1e-5)


def test_precision_is_part_of_the_cache_key(tmp_path, images):
    enc = OffsetTower(0.0)
    fp32 = FeatureCache(enc, tmp_path, precision="fp32", store_tokens=False)
    bf16 = FeatureCache(enc, tmp_path, precision="bf16", store_tokens=False)
    assert fp32.directory != bf16.directory and fp32.fingerprint != bf16.fingerprint
    keys = fp32.build(images, show_progress=False)
    assert len(bf16) == 0 and not bf16.has(keys[0])  # fp32 features are never read as bf16 ones
    bf16.build(images, show_progress=False)
    exact, rounded = fp32.load(keys).pooled, bf16.load(keys).pooled
    assert not torch.equal(exact, rounded)
    torch.testing.assert_close(rounded, exact, rtol=2e-2, atol=2e-2)
    with pytest.raises(ValueError, match="feature_cache_precision"):
        FeatureCache(enc, tmp_path, precision="fp16")


def test_auto_keeps_bf16_only_where_it_agrees_with_fp32(tmp_path, images, monkeypatch, caplog):
    monkeypatch.setattr(modes_module, "native_bf16", lambda device: True)
    kept = FeatureCache(OffsetTower(0.0), tmp_path, precision="auto", store_tokens=False)
    kept.build(images, show_progress=False)
    assert kept.precision == "bf16"
    broken = FeatureCache(OffsetTower(4096.0), tmp_path, precision="auto", store_tokens=False)
    assert broken.precision == "bf16"  # the hardware's choice, before the check
    with caplog.at_level("WARNING", logger="multimodal.cache"):
        keys = broken.build(images, show_progress=False)
    assert broken.precision == "fp32" and "in fp32" in caplog.text
    assert broken.directory == FeatureCache(OffsetTower(4096.0), tmp_path, precision="fp32", store_tokens=False).directory
    assert len(broken) == len(images) and torch.isfinite(broken.load(keys).pooled).all()
    monkeypatch.setattr(modes_module, "native_bf16", lambda device: False)
    assert FeatureCache(OffsetTower(0.0), tmp_path, precision="auto", store_tokens=False).precision == "fp32"
