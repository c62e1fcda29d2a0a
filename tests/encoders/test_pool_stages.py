"""`pool_stages` of the timm-backed encoders: pooled intermediate stages appended to `pooled`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoders import EncoderError, create_encoder, encoder_from_config


def _stage_means(enc, inputs, stages: list[int]) -> list[torch.Tensor]:
    """Global averages of the given feature_info stages' outputs, taken by forward hooks (not the encoder's path)."""
    seen: dict[int, torch.Tensor] = {}
    names = [enc.backbone.feature_info[i]["module"] for i in stages]
    hooks = [enc.backbone.get_submodule(n).register_forward_hook(
        lambda _m, _i, out, k=k: seen.__setitem__(k, out.mean(dim=(2, 3)))) for k, n in enumerate(names)]
    try:
        enc(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return [seen[k] for k in range(len(names))]


@torch.no_grad()
def test_image_pool_stages_append_the_pooled_stages_and_round_trip():
    plain = create_encoder("image:test_efficientnet", pretrained=False, img_size=32, pool_stages=[]).eval()
    enc = create_encoder("image:test_efficientnet", pretrained=False, img_size=32, pool_stages=[-1, -2]).eval()
    enc.load_state_dict(plain.state_dict(), strict=True)  # same weights: the option adds no parameters
    widths = [int(enc.backbone.feature_info[i]["num_chs"]) for i in (-2, -1)]
    assert enc.pool_stages == [len(enc.backbone.feature_info) - 2, len(enc.backbone.feature_info) - 1]
    assert enc.output_dim == plain.output_dim + sum(widths)
    x = enc.preprocess([np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8), None])
    out, base = enc(x), plain(x)
    assert out.pooled.shape == (2, enc.output_dim)
    torch.testing.assert_close(out.pooled[:, :plain.output_dim], base.pooled)  # the default feature comes first
    torch.testing.assert_close(out.pooled[:, plain.output_dim:], torch.cat(_stage_means(plain, x, enc.pool_stages), 1))
    torch.testing.assert_close(out.tokens, base.tokens)  # tokens are the final map, as before
    rebuilt = encoder_from_config(enc.get_config()).eval()
    rebuilt.load_state_dict(enc.state_dict(), strict=True)
    assert rebuilt.pool_stages == enc.pool_stages and rebuilt.output_dim == enc.output_dim
    torch.testing.assert_close(rebuilt(x).pooled, out.pooled)
    older = {k: v for k, v in plain.get_config().items() if k != "pool_stages"}  # saved before the option existed
    assert encoder_from_config(older).output_dim == plain.output_dim
    every = create_encoder("image:test_efficientnet", pretrained=False, img_size=32, pool_stages="all")
    assert every.get_config()["pool_stages"] == [0, 1, 2, 3, 4]  # stored resolved: a rebuild needs no rule
    assert every.output_dim == plain.output_dim + sum(int(f["num_chs"]) for f in every.backbone.feature_info)


@torch.no_grad()
def test_audio_mel_pool_stages_widen_pooled_and_round_trip():
    enc = create_encoder("audio-mel:test_efficientnet", pretrained=False, max_seconds=0.5, resize=None,
                         pool_stages=[-2]).eval()
    plain = encoder_from_config({**enc.get_config(), "pool_stages": []}).eval()
    plain.load_state_dict(enc.state_dict(), strict=True)
    rng = np.random.default_rng(0)
    x = enc.preprocess([(rng.normal(0, 0.1, 8000).astype(np.float32), 16000), None])
    out, base = enc(x), plain(x)
    assert out.pooled.shape == (2, plain.output_dim + int(enc.backbone.feature_info[-2]["num_chs"]))
    torch.testing.assert_close(out.pooled[:, :plain.output_dim], base.pooled)
    torch.testing.assert_close(out.pooled[:, plain.output_dim:], _stage_means(plain, x, enc.pool_stages)[0])
    assert torch.equal(out.mask, base.mask)
    rebuilt = encoder_from_config(enc.get_config()).eval()
    rebuilt.load_state_dict(enc.state_dict(), strict=True)
    assert rebuilt.get_config() == enc.get_config()
    torch.testing.assert_close(rebuilt(x).pooled, out.pooled)


@pytest.mark.parametrize("value, says", [
    ([5], "out of range"), ("last", "list of stage indices"), ([True], "list of stage indices"),
    ([-1, 4], "names a stage twice"),
])
def test_wrong_pool_stages_name_the_field(value, says):
    """test_efficientnet has 5 feature_info stages: 5 is out of range, -1 and 4 are the same stage."""
    for spec, kwargs in (("image:test_efficientnet", {"img_size": 32}), ("audio-mel:test_efficientnet", {})):
        with pytest.raises(EncoderError, match="pool_stages") as caught:
            create_encoder(spec, pretrained=False, pool_stages=value, **kwargs)
        assert says in str(caught.value) and "\n" not in str(caught.value)
