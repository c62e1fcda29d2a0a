"""`image:hf-hub:<repo>` / `audio-mel:hf-hub:<repo>`: timm hub names, loaded offline from a fake local HF cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from encoders import EncoderError, create_encoder, encoder_from_config

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "timm/test_resnet.fake_in10"  # exists nowhere but in the fake cache below
PRETRAINED_CFG = {
    "tag": "fake_in10",
    "custom_load": False,
    "input_size": [3, 48, 48],
    "fixed_input_size": False,
    "interpolation": "bilinear",
    "crop_pct": 0.8,
    "crop_mode": "center",
    "mean": [0.25, 0.5, 0.75],
    "std": [0.2, 0.3, 0.4],
    "num_classes": 10,
    "pool_size": [2, 2],
    "first_conv": "conv1.0",
    "classifier": "fc",
}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty HF hub cache that huggingface_hub (hence timm) reads, offline.

    huggingface_hub reads HF_HUB_CACHE / HF_HUB_OFFLINE into `huggingface_hub.constants` when it is first
    imported and hf_hub_download looks the constants up at call time, so both the environment and the
    constants are pointed here.
    """
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf_home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return cache


def _publish(cache, repo_id: str, files: dict[str, bytes]) -> None:
    """Lay `files` out as the HF cache does for a downloaded repo: a snapshot per commit, refs/main -> commit."""
    root = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = root / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)


def _fake_timm_repo(cache, model_args: dict | None = None, weights: bool = True) -> dict[str, torch.Tensor]:
    """Publish a 10-class test_resnet as a timm hub repo (config.json + model.safetensors); return its weights."""
    import timm
    from safetensors.torch import save

    torch.manual_seed(7)
    source = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    config = {
        "architecture": "test_resnet",
        "num_classes": 10,
        "num_features": source.num_features,
        "global_pool": "avg",
        "pretrained_cfg": PRETRAINED_CFG,
    }
    if model_args:
        config["model_args"] = model_args
    files = {"config.json": json.dumps(config).encode()}
    if weights:
        files["model.safetensors"] = save(state)
    _publish(cache, REPO, files)
    return state


def _assert_loaded(backbone: torch.nn.Module, state: dict[str, torch.Tensor], rgb_to_mono: bool = False) -> None:
    own = backbone.state_dict()
    assert set(own) == {k for k in state if not k.startswith("fc.")}  # the 10-class head is dropped
    for key, tensor in own.items():
        expected = state[key]
        if rgb_to_mono and key == "conv1.0.weight":
            expected = expected.sum(1, keepdim=True)
        torch.testing.assert_close(tensor, expected, rtol=0, atol=0, msg=key)


def test_image_hub_name_loads_the_cached_weights_offline(hub_cache):
    state = _fake_timm_repo(hub_cache)
    enc = create_encoder(f"image:hf-hub:{REPO}")
    assert enc.spec == f"image:hf-hub:{REPO}" and enc.model_name == "test_resnet"
    _assert_loaded(enc.backbone, state)
    # preprocessing follows the hub's pretrained_cfg
    data = enc.data_config
    assert tuple(data["input_size"]) == (3, 48, 48) and data["crop_pct"] == 0.8 and data["interpolation"] == "bilinear"
    assert tuple(data["mean"]) == (0.25, 0.5, 0.75) and tuple(data["std"]) == (0.2, 0.3, 0.4)
    x = enc.preprocess([np.full((60, 60, 3), 128, np.uint8), None])
    assert x["pixel_values"].shape == (2, 3, 48, 48)
    assert enc.eval()(x).pooled.shape == (2, enc.output_dim)


def test_hub_encoder_round_trips_without_the_hub(hub_cache, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    _fake_timm_repo(hub_cache, model_args={"global_pool": "max"})
    enc = create_encoder(f"image:hf-hub:{REPO}").eval()
    assert enc.backbone.global_pool.pool_type == "max"  # the hub config's model_args are applied
    config = json.loads(json.dumps(enc.get_config()))
    assert config["model_name"] == "test_resnet" and config["timm_kwargs"] == {"global_pool": "max"}
    enc.save_assets(str(tmp_path / "assets"))

    # rebuilding must not touch the hub or the cache: point both at nothing
    empty = tmp_path / "empty_cache"
    empty.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(empty))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(empty))
    rebuilt = encoder_from_config(config, str(tmp_path / "assets")).eval()
    assert rebuilt.spec == enc.spec and rebuilt.get_config() == enc.get_config()
    assert rebuilt.data_config == enc.data_config and rebuilt.backbone.global_pool.pool_type == "max"
    rebuilt.load_state_dict(enc.state_dict(), strict=True)
    raw = [np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8), None]
    x = enc.preprocess(raw)
    assert torch.equal(x["pixel_values"], rebuilt.preprocess(raw)["pixel_values"])
    with torch.no_grad():
        a, b = enc(x), rebuilt(x)
    assert torch.equal(a.pooled, b.pooled) and torch.equal(a.tokens, b.tokens)


def test_audio_mel_hub_name_sums_the_rgb_stem(hub_cache):
    state = _fake_timm_repo(hub_cache)
    enc = create_encoder(f"audio-mel:hf-hub:{REPO}", max_seconds=0.5).eval()
    assert enc.model_name == "test_resnet" and enc.backbone.conv1[0].weight.shape[1] == 1
    _assert_loaded(enc.backbone, state, rgb_to_mono=True)
    rebuilt = encoder_from_config(json.loads(json.dumps(enc.get_config()))).eval()
    rebuilt.load_state_dict(enc.state_dict(), strict=True)
    x = enc.preprocess([(np.sin(np.arange(4000, dtype=np.float32) / 9), 16000)])
    with torch.no_grad():
        assert torch.equal(enc(x).pooled, rebuilt(x).pooled)


def test_hub_name_with_pretrained_false_takes_only_the_architecture(hub_cache):
    state = _fake_timm_repo(hub_cache, weights=False)
    enc = create_encoder(f"image:hf-hub:{REPO}", pretrained=False)
    assert enc.model_name == "test_resnet" and tuple(enc.data_config["input_size"]) == (3, 48, 48)
    assert not torch.equal(enc.backbone.conv1[0].weight, state["conv1.0.weight"])
    with pytest.raises(EncoderError, match="cannot load the pretrained weights"):
        create_encoder(f"image:hf-hub:{REPO}")  # config.json is cached, model.safetensors is not


def test_hub_repo_missing_from_the_cache_offline_is_a_clear_error(hub_cache):
    for spec in ("image:hf-hub:timm/not_cached.anywhere", "audio-mel:hf-hub:timm/not_cached.anywhere"):
        with pytest.raises(EncoderError) as info:
            create_encoder(spec)
        msg = str(info.value)
        assert spec in msg and "HF_HUB_OFFLINE is set" in msg and str(hub_cache) in msg
        assert "Options" in msg and "pretrained=False" in msg and "checkpoint" in msg and "directory" in msg
    with pytest.raises(EncoderError, match="no repo id"):
        create_encoder("image:hf-hub:")


def test_hub_model_name_must_agree(hub_cache):
    _fake_timm_repo(hub_cache)
    with pytest.raises(EncoderError, match="names architecture 'test_resnet', not model_name='resnet18'"):
        create_encoder(f"image:hf-hub:{REPO}", model_name="resnet18")
    assert create_encoder(f"image:hf-hub:{REPO}", model_name="test_resnet").model_name == "test_resnet"


def test_repo_id_without_prefix_suggests_hf_hub():
    with pytest.raises(EncoderError, match="write 'image:hf-hub:timm/resnet18.a1_in1k'"):
        create_encoder("image:timm/resnet18.a1_in1k")
