"""The feature cache's ONNX Runtime backend: parity with torch fp32, one export reused, fallbacks and errors."""

from __future__ import annotations

import logging
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from encoders import create_encoder
from multimodal.cache import FeatureCache
from multimodal.cache import ort as ort_module
from multimodal.config import ConfigError, config_from_dict
from tests.multimodal.cache.two_ranks import on_two_ranks

pytest.importorskip("onnxruntime")


def _image_tower():
    torch.manual_seed(0)
    return create_encoder("image:test_efficientnet", pretrained=False, img_size=32)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[str]:
    """Twelve RGB JPEG files of seeded noise."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    paths = []
    for i in range(12):
        paths.append(str(folder / f"p{i}.jpg"))
        Image.fromarray(rng.integers(0, 255, (40 + i, 48, 3), dtype=np.uint8)).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def onnx_fill(tmp_path_factory, photos) -> FeatureCache:
    """An explicit ``onnx`` fill of the first ten photos (exports the tower once for this module): the first
    `PARITY_ITEMS` go through both torch and ORT (torch's features kept), the other two through ORT alone."""
    cache = FeatureCache(_image_tower(), tmp_path_factory.mktemp("ort"), backend="onnx")
    cache.build(photos[:10], batch_size=4, show_progress=False)
    return cache


def _with_export(onnx_fill: FeatureCache, tmp_path, **kw) -> FeatureCache:
    """A fresh cache of the same tower under `tmp_path`, its folder holding `onnx_fill`'s export."""
    cache = FeatureCache(_image_tower(), tmp_path, **kw)
    shutil.copy(onnx_fill.directory / ort_module.GRAPH_FILE, cache.directory / ort_module.GRAPH_FILE)
    return cache


def test_onnx_fill_equals_torch_within_tolerance_and_shares_the_fp32_folder(onnx_fill, photos, tmp_path):
    assert onnx_fill.tower is not None and (onnx_fill.directory / ort_module.GRAPH_FILE).exists()
    torch_fill = FeatureCache(_image_tower(), tmp_path, backend="torch")
    assert torch_fill.directory.name == onnx_fill.directory.name  # parity-checked fp32: one folder for both
    keys = torch_fill.build(photos[:10], batch_size=4, show_progress=False)
    ours, theirs = onnx_fill.load(keys), torch_fill.load(keys)
    for a, b in ((ours.pooled, theirs.pooled), (ours.tokens, theirs.tokens)):
        assert a.shape == b.shape
        assert float((a - b).abs().max()) <= ort_module.MAX_DIFF * max(1.0, float(b.abs().max()))
    checked = ort_module.PARITY_ITEMS
    assert torch.equal(ours.pooled[:checked], theirs.pooled[:checked])  # the parity check's torch features, stored
    assert not torch.equal(ours.pooled[checked:], theirs.pooled[checked:])  # the rest came from ORT
    onnx_fill.build(photos[:10], show_progress=False)
    assert onnx_fill.hits == 10  # filled once, then read
    reader = pickle.loads(pickle.dumps(onnx_fill))  # as DataLoader workers get it: no encoder, no ORT session
    assert reader.tower is None and torch.equal(reader.load(keys).pooled, ours.pooled)


def test_the_export_is_reused_not_redone(onnx_fill, photos, tmp_path, monkeypatch):
    cache = _with_export(onnx_fill, tmp_path, backend="onnx")
    monkeypatch.setattr(ort_module, "export_tower", lambda *a: pytest.fail("exported again"))
    cache.build(photos[10:], show_progress=False)
    assert cache.tower is not None and cache.misses == 2


def test_auto_uses_an_existing_export_even_for_a_small_fill(onnx_fill, photos, tmp_path):
    cache = _with_export(onnx_fill, tmp_path)
    assert cache.backend == "auto"
    cache.build(photos[:3], show_progress=False)
    assert cache.tower is not None


def test_parity_failure_falls_back_to_torch_with_one_warning(onnx_fill, photos, tmp_path, monkeypatch, caplog):
    cache = _with_export(onnx_fill, tmp_path, backend="onnx")
    run = ort_module.OrtTower.__call__

    def drifting(self, inputs):
        out = run(self, inputs)
        return out._replace(pooled=out.pooled + 0.05)

    monkeypatch.setattr(ort_module.OrtTower, "__call__", drifting)
    with caplog.at_level(logging.WARNING, logger="multimodal.cache"):
        keys = cache.build(photos[:6], batch_size=4, show_progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ONNX Runtime differs from torch fp32" in warnings[0]
    assert cache.tower is None
    reference = FeatureCache(_image_tower(), tmp_path / "torch", backend="torch")
    torch.testing.assert_close(cache.load(keys).pooled, reference.load(reference.build(photos[:6])).pooled)


def test_without_onnxruntime_auto_runs_torch_and_onnx_is_a_clear_error(onnx_fill, photos, tmp_path, monkeypatch):
    monkeypatch.setattr(ort_module, "onnxruntime_available", lambda: False)
    auto = _with_export(onnx_fill, tmp_path)
    auto.build(photos[:3], show_progress=False)
    assert auto.tower is None and len(auto) == 3
    explicit = FeatureCache(_image_tower(), tmp_path / "explicit", backend="onnx")
    with pytest.raises(ConfigError, match=r"data.feature_cache_backend: onnx needs onnxruntime"):
        explicit.build(photos[:3], show_progress=False)


def test_auto_exports_only_for_a_large_fill_and_a_failed_export_runs_torch(photos, tmp_path, monkeypatch, caplog):
    def unsupported(*args):
        raise RuntimeError("unsupported operator aten::made_up")

    monkeypatch.setattr(ort_module, "export_tower", unsupported)
    small = FeatureCache(_image_tower(), tmp_path / "small")
    small.build(photos[:3], show_progress=False)  # below AUTO_MIN_ITEMS: no export tried, no warning
    assert small.tower is None and not caplog.records
    monkeypatch.setattr(ort_module, "AUTO_MIN_ITEMS", 3)
    large = FeatureCache(_image_tower(), tmp_path / "large")
    with caplog.at_level(logging.WARNING, logger="multimodal.cache"):
        large.build(photos[:3], show_progress=False)
    assert large.tower is None and len(large) == 3
    assert [r.getMessage() for r in caplog.records] == [
        "feature cache: image features in torch: the tower cannot run in ONNX Runtime (RuntimeError: unsupported "
        "operator aten::made_up)"]
    with pytest.raises(ConfigError, match="onnx: the image tower cannot run in ONNX Runtime.*made_up"):
        FeatureCache(_image_tower(), tmp_path / "explicit", backend="onnx").build(photos[:3], show_progress=False)


def test_text_tower_tokens_and_mask_match_torch(tiny_text_dir, tmp_path):
    texts = ["a short one", "a caption that is quite a bit longer than the first", "mid length text", None]
    torch.manual_seed(0)
    onnx = FeatureCache(create_encoder(f"text:{tiny_text_dir}"), tmp_path / "onnx", backend="onnx")
    keys = onnx.build(texts, show_progress=False)
    assert onnx.tower is not None
    reference = FeatureCache(create_encoder(f"text:{tiny_text_dir}"), tmp_path / "torch", backend="torch")
    ours, theirs = onnx.load(keys), reference.load(reference.build(texts, show_progress=False))
    assert torch.equal(ours.mask, theirs.mask)
    torch.testing.assert_close(ours.tokens, theirs.tokens, rtol=0, atol=ort_module.MAX_DIFF)
    torch.testing.assert_close(ours.pooled, theirs.pooled, rtol=0, atol=ort_module.MAX_DIFF)


def test_config_rejects_a_bad_backend_and_onnx_outside_fp32():
    with pytest.raises(ConfigError, match="data.feature_cache_backend: invalid choice 'ort'"):
        config_from_dict({"data": {"feature_cache_backend": "ort"}})
    with pytest.raises(ConfigError, match="data.feature_cache_backend: onnx runs the towers in fp32"):
        config_from_dict({"data": {"feature_cache_backend": "onnx", "feature_cache_precision": "bf16"}})
    with pytest.raises(ConfigError, match="data.feature_cache_backend must be one of auto, torch, onnx"):
        FeatureCache(_image_tower(), "unused", backend="ort")


def _fill_on_two_ranks(caches, photos) -> list:
    """Fill `caches[0]` and `caches[1]` as two 'processes'; the errors raised."""
    return on_two_ranks(lambda rank, accelerator: caches[rank].build(photos, batch_size=2, accelerator=accelerator,
                                                                      show_progress=False))


def test_two_ranks_export_once_and_both_fill_through_ort(onnx_fill, photos, tmp_path, monkeypatch):
    """The first process exports, the other waits and loads that file."""
    exports = []

    def export(encoder, path):
        exports.append(path)
        shutil.copy(onnx_fill.directory / ort_module.GRAPH_FILE, path)

    monkeypatch.setattr(ort_module, "export_tower", export)
    caches = [FeatureCache(_image_tower(), tmp_path, backend="onnx") for _ in range(2)]
    assert not _fill_on_two_ranks(caches, photos) and len(exports) == 1
    assert all(c.tower is not None and len(c) == len(photos) for c in caches)


def test_when_the_first_rank_cannot_export_every_rank_fills_in_torch(onnx_fill, photos, tmp_path, monkeypatch):
    """auto: the first process's export fails (torch, one warning); the others follow it and never export, so
    every process skips the same checked items and the fill is complete."""
    exports = []

    def export(encoder, path):  # fails for the first caller only: a second export would succeed
        exports.append(path)
        if len(exports) == 1:
            raise RuntimeError("unsupported operator")
        shutil.copy(onnx_fill.directory / ort_module.GRAPH_FILE, path)

    monkeypatch.setattr(ort_module, "export_tower", export)
    monkeypatch.setattr(ort_module, "AUTO_MIN_ITEMS", 0)
    caches = [FeatureCache(_image_tower(), tmp_path, backend="auto") for _ in range(2)]
    assert not _fill_on_two_ranks(caches, photos)
    assert len(exports) == 1 and all(c.tower is None for c in caches)
    caches[0].refresh()
    assert len(caches[0]) == len(photos)
