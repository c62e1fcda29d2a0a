"""audio-mel front end: resizing to the backbone's pretrained input size, normalisation choices, old configs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from encoders import EncoderError, create_encoder, encoder_from_config


def _clips():
    rng = np.random.default_rng(0)
    return [(rng.normal(0, 0.1, 8000).astype(np.float32), 16000), (rng.normal(0, 0.1, 4000).astype(np.float32), 16000)]


def _backbone_input(enc, inputs) -> torch.Tensor:
    seen = {}
    hook = enc.backbone.conv_stem.register_forward_pre_hook(lambda _m, args: seen.__setitem__("x", args[0]))
    try:
        out = enc(inputs)
    finally:
        hook.remove()
    return seen["x"], out


def test_default_resizes_to_the_pretrained_input_size_and_keeps_the_token_mask():
    enc = create_encoder("audio-mel:test_efficientnet", pretrained=False, max_seconds=0.5)
    assert enc.get_config()["resize"] == "pretrained" and enc.input_hw == (160, 160)
    x, out = _backbone_input(enc, enc.preprocess(_clips()))
    assert tuple(x.shape[-2:]) == (160, 160)
    # the half-length clip covers about half of the feature columns
    cols = int(round(out.mask.shape[1] ** 0.5))
    real_cols = out.mask.view(2, cols, cols)[:, 0].sum(1)
    assert real_cols[0] == cols and 0 < real_cols[1] <= cols // 2 + 1


def test_native_and_explicit_sizes_and_global_normalisation():
    native = create_encoder("audio-mel:test_efficientnet", pretrained=False, max_seconds=0.5, resize=None, n_mels=32)
    x, _ = _backbone_input(native, native.preprocess(_clips()))
    assert x.shape[-2] == 32 and x.shape[-1] == 51
    glob = create_encoder("audio-mel:test_efficientnet", pretrained=False, max_seconds=0.5, resize=[48, 96],
                          normalize="global", norm_stats=[-5.0, 2.0])
    x, _ = _backbone_input(glob, glob.preprocess(_clips()))
    assert tuple(x.shape[-2:]) == (48, 96)
    with pytest.raises(EncoderError, match="norm_stats"):
        create_encoder("audio-mel:test_efficientnet", pretrained=False, normalize="global")
    with pytest.raises(EncoderError, match="resize"):
        create_encoder("audio-mel:test_efficientnet", pretrained=False, resize="huge")


def test_config_round_trip_and_folders_saved_before_resizing_existed():
    enc = create_encoder("audio-mel:test_efficientnet", pretrained=False, max_seconds=0.5, normalize="none")
    clone = encoder_from_config(enc.get_config())
    assert clone.get_config() == enc.get_config()
    old = {k: v for k, v in enc.get_config().items() if k not in ("resize", "input_size", "normalize", "norm_stats")}
    legacy = encoder_from_config(old)
    assert legacy.input_hw is None and legacy.frontend.normalize == "clip"  # what those folders were trained with


def test_defaults_are_the_front_end_chosen_on_real_recordings_and_saved_folders_keep_their_own():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enc = create_encoder("audio-mel:test_efficientnet", pretrained=False, max_seconds=0.5)
    config = enc.get_config()
    # BENCHMARKS.md "Real development sets": 128 mels, 1024-point FFT, 10 ms hop won on both real audio sets
    assert (config["n_mels"], config["n_fft"], config["hop_length"]) == (128, 1024, 160)
    assert float(enc.frontend.mel.mel_scale.fb.sum(0).min()) > 0  # every mel filter covers an FFT bin
    assert not [w for w in caught if "filterbank" in str(w.message)]
    x, _ = _backbone_input(enc, enc.preprocess(_clips()))
    assert tuple(x.shape[-2:]) == (160, 160)
    old = encoder_from_config({**config, "n_mels": 64, "n_fft": 400})  # a folder saved under the old defaults
    assert (old.n_mels, old.n_fft, old.frontend.mel.n_fft) == (64, 400, 400)
    spec, _ = old.frontend(*old.preprocess(_clips()).values())
    assert spec.shape[2] == 64
