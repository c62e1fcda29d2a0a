"""Feature cache: hits and misses, invalidation on every key part, round trip of pooled/tokens/mask."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from encoders.base import Encoder, EncoderOutput
from multimodal.cache import ABSENT, FeatureCache, content_key, encoder_fingerprint
from tests.multimodal.cache.two_ranks import on_two_ranks


class _ResizeFlatten:
    """Picklable preprocessor: grey image resized to `size`, flattened."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, raw: list) -> dict:
        rows = []
        for img in raw:
            if img is None:
                img = Image.new("L", (self.size, self.size))
            img = img.convert("L").resize((self.size, self.size))
            rows.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).flatten())
        return {"pixels": torch.stack(rows)}


class CountingImageEncoder(Encoder):
    """A minimal image encoder for cache tests that counts how many samples it encoded."""

    modality = "image"

    def __init__(self, size: int = 4, dim: int = 3, spec: str = "image:counting") -> None:
        super().__init__()
        self.size, self.output_dim, self.spec = size, dim, spec
        torch.manual_seed(0)
        self.backbone = torch.nn.Linear(size * size, dim * 2)
        self.calls = 0

    def forward(self, inputs: dict) -> EncoderOutput:
        self.calls += inputs["pixels"].shape[0]
        h = self.backbone(inputs["pixels"])
        tokens = h.view(h.shape[0], 2, self.output_dim)
        return EncoderOutput(tokens.mean(1), tokens, None)

    def get_preprocessor(self, train: bool = False) -> _ResizeFlatten:
        return _ResizeFlatten(self.size)

    def get_config(self) -> dict:
        return {"spec": self.spec, "dim": self.output_dim}

    def preprocess_config(self) -> dict:
        return {"size": self.size}


def test_hit_miss_and_round_trip(tmp_path, images):
    enc = CountingImageEncoder()
    cache = FeatureCache(enc, tmp_path / "cache")
    sources = images + [images[0], None]  # a duplicate and an absent item
    keys = cache.build(sources, batch_size=2)
    assert enc.calls == 6 and cache.misses == 6 and cache.hits == 1  # duplicate encoded once
    assert keys[-1] == ABSENT and keys[0] == keys[5]
    loaded = cache.load(keys)
    with torch.no_grad():
        direct = enc(enc.preprocess([Image.open(p) for p in images] + [Image.open(images[0]), None]))
    assert torch.allclose(loaded.pooled, direct.pooled, atol=1e-6)
    assert torch.allclose(loaded.tokens, direct.tokens, atol=1e-6) and loaded.mask is None

    # A fresh cache object on the same directory (a new run) hits everything.
    enc2 = CountingImageEncoder()
    cache2 = FeatureCache(enc2, tmp_path / "cache")
    cache2.build(sources)
    assert enc2.calls == 0 and cache2.hits == 7 and cache2.misses == 0
    assert torch.equal(cache2.load(keys).pooled, loaded.pooled)


def test_invalidation_on_each_key_part(tmp_path, images):
    root = tmp_path / "cache"
    base = CountingImageEncoder()
    FeatureCache(base, root).build(images)

    def misses(enc):
        c = FeatureCache(enc, root)
        c.build(images)
        return c.misses

    assert misses(CountingImageEncoder()) == 0
    assert misses(CountingImageEncoder(spec="image:other")) == 5  # spec / config
    assert misses(CountingImageEncoder(size=5)) == 5  # preprocessing parameter (image size)
    changed = CountingImageEncoder()
    with torch.no_grad():
        changed.backbone.weight[0, 0] += 1e-3
    assert misses(changed) == 5  # weights
    assert encoder_fingerprint(changed) != encoder_fingerprint(CountingImageEncoder())

    # file content: rewrite one image in place -> only that item misses
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(images[2])
    c = FeatureCache(CountingImageEncoder(), root)
    c.build(images)
    assert c.misses == 1 and c.hits == 4


def test_text_keys_masks_and_tokens_flag(tmp_path):
    assert content_key("text", "a dog") == content_key("text", "a dog") != content_key("text", "a cat")

    class MaskedText(CountingImageEncoder):
        modality = "text"

        def get_preprocessor(self, train=False):
            return _Lengths()

        def forward(self, inputs):
            lengths = inputs["lengths"]
            b, t = lengths.shape[0], int(lengths.max())
            tokens = torch.arange(b * t * 3, dtype=torch.float32).view(b, t, 3)
            mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
            self.calls += b
            return EncoderOutput(tokens.sum(1), tokens, mask)

    enc = MaskedText()
    cache = FeatureCache(enc, tmp_path / "c")
    keys = cache.build(["a", "abc", "ab"], batch_size=2)  # batches of different padded length
    out = cache.load(keys)
    assert out.tokens.shape == (3, 3, 3)
    assert out.mask.tolist() == [[True, False, False], [True, True, True], [True, True, False]]
    # a pooled-only cache does not satisfy a cache that needs tokens
    pooled_only = FeatureCache(MaskedText(), tmp_path / "p", store_tokens=False)
    pooled_only.build(["a"])
    assert pooled_only.load([content_key("text", "a")]).tokens is None
    needs_tokens = FeatureCache(MaskedText(), tmp_path / "p", store_tokens=True)
    needs_tokens.build(["a"])
    assert needs_tokens.misses == 1 and needs_tokens.load([content_key("text", "a")]).tokens is not None
    with pytest.raises(KeyError, match="run build"):
        cache.load([content_key("text", "never")])


class _Lengths:
    def __call__(self, raw):
        return {"lengths": torch.tensor([len(s or "x") for s in raw])}


def test_dataset_and_collator_yield_features_without_loading(tmp_path, images):
    from multimodal.cache import CachedFeatureCollator, CachedFeatureDataset
    from multimodal.data import Collator, MultimodalDataset

    rows = [{"image": os.path.basename(p), "text": f"caption {i}", "label": str(i % 2)} for i, p in enumerate(images)]
    rows.append({"image": None, "text": "no image", "label": "0"})
    ds = MultimodalDataset(rows, {"image": "image", "text": "text"}, label_column="label", base_dir=os.path.dirname(images[0]))
    enc = CountingImageEncoder()
    cache = FeatureCache(enc, tmp_path / "cache")
    sources = [os.path.join(ds.base_dir, r["image"]) if r["image"] else None for r in rows]
    wrapped = CachedFeatureDataset(ds, {"image": cache.build(sources)})
    item = wrapped[0]
    assert "image" not in item and item["text"] == "caption 0" and "feature_keys" in item

    collate = CachedFeatureCollator(Collator({"text": _Lengths()}), {"image": cache})
    batch = collate([wrapped[i] for i in range(len(wrapped))])
    assert set(batch["inputs"]) == {"text"} and batch["labels"].tolist() == [0, 1, 0, 1, 0, 0]
    assert batch["present"]["image"].tolist() == [True] * 5 + [False]
    feats = batch["features"]["image"]
    with torch.no_grad():
        direct = enc(enc.preprocess([Image.open(p) for p in images]))
    assert torch.allclose(feats.pooled[:5], direct.pooled, atol=1e-6)
    calls = enc.calls
    collate([wrapped[0], wrapped[1]])
    assert enc.calls == calls  # batches never run the encoder
    import pickle

    assert pickle.loads(pickle.dumps(collate)).caches["image"].encoder is None  # workers get no encoder


def test_real_encoder_fingerprints_follow_preprocessing(tiny_text_dir):
    from encoders import create_encoder

    def image(size):
        torch.manual_seed(0)
        return create_encoder("image:test_efficientnet", pretrained=False, img_size=size)

    assert encoder_fingerprint(image(32)) == encoder_fingerprint(image(32))
    assert encoder_fingerprint(image(32)) != encoder_fingerprint(image(40))  # image size
    short = create_encoder(f"text:{tiny_text_dir}", max_length=16)
    long = create_encoder(f"text:{tiny_text_dir}", max_length=32)
    assert encoder_fingerprint(short) != encoder_fingerprint(long)  # tokenizer max_length
    assert encoder_fingerprint(long) == encoder_fingerprint(create_encoder(f"text:{tiny_text_dir}", max_length=32))


def test_two_ranks_split_the_work_and_see_every_entry(tmp_path, images):
    """Two 'processes' (threads with a shared barrier) build one cache: each item encoded exactly once."""
    import time

    encoders = [CountingImageEncoder(), CountingImageEncoder()]
    results = {}

    def work(rank, accelerator):
        if rank == 1:
            time.sleep(0.3)  # a slow rank opens the cache after the other one may have written
        cache = FeatureCache(encoders[rank], tmp_path / "cache")
        keys = cache.build(images, batch_size=2, accelerator=accelerator)
        results[rank] = (keys, all(cache.has(k) for k in keys), cache.load(keys).pooled)

    assert not on_two_ranks(work, timeout=30)
    assert results[0][1] and results[1][1]
    assert encoders[0].calls + encoders[1].calls == len(images) and encoders[1].calls > 0
    assert torch.equal(results[0][2], results[1][2])


def test_palette_image_keys_follow_the_colours_the_encoder_sees():
    from PIL import Image

    from multimodal.cache import content_key

    red, blue = Image.new("P", (8, 8), 0), Image.new("P", (8, 8), 0)
    red.putpalette([255, 0, 0] * 256)
    blue.putpalette([0, 0, 255] * 256)
    assert red.tobytes() == blue.tobytes()  # same indices, different colours
    assert content_key("image", red) != content_key("image", blue)
    assert content_key("image", red) == content_key("image", red.convert("RGB"))


def test_the_fill_path_runs_the_tower_through_encode_batch_only(tmp_path, images, monkeypatch):
    """`encode_batch` is the one seam a faster encoding backend replaces: what it returns is what gets stored."""
    from multimodal.cache import encode as encode_module

    real = encode_module.encode_batch
    seen = []

    def doubled(encoder, preprocess, raw, device, precision, tower=None):
        seen.append((len(raw), encoder.training, precision))
        out = real(encoder, preprocess, raw, device, precision, tower=tower)
        return EncoderOutput(out.pooled * 2, out.tokens * 2, out.mask)

    monkeypatch.setattr(encode_module, "encode_batch", doubled)
    enc = CountingImageEncoder()
    cache = FeatureCache(enc, tmp_path / "cache", shard_size=3)
    keys = cache.build(images, batch_size=2, show_progress=False)
    assert seen == [(2, False, "fp32"), (2, False, "fp32"), (1, False, "fp32")] and enc.calls == 5  # in eval mode
    assert enc.training  # and back in the mode it came in
    with torch.no_grad():
        direct = enc(enc.get_preprocessor(False)([Image.open(p) for p in images]))
    assert torch.allclose(cache.load(keys).pooled, direct.pooled * 2)
    assert len(list((tmp_path / "cache").glob("*/shard-*.json"))) == 2  # shards of about shard_size items
