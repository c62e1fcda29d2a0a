"""The exported folder's numpy preprocessing equals the encoders' own eval preprocessing, built from JSON alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio.functional as AF
from PIL import Image

from encoders import create_encoder
from multimodal.deploy import DeployError
from multimodal.deploy.describe import describe_encoder
from multimodal.deploy.runtime import build_preprocessor, resample


def _both(encoder, tmp_path, samples):
    spec = describe_encoder(encoder, str(tmp_path), "m")
    ours = build_preprocessor(spec, str(tmp_path))(samples)
    theirs = encoder.preprocess(samples)
    assert sorted(ours) == sorted(theirs)
    return ours, {k: v.numpy() for k, v in theirs.items()}


def test_text_ids_equal_the_hf_tokenizer(tmp_path, minilm_dir):
    enc = create_encoder(f"text:{minilm_dir}", max_length=12)
    texts = ["Hello, World!", None, "a much longer sentence that will certainly be truncated at twelve tokens", "ÉCOLE café"]
    ours, theirs = _both(enc, tmp_path, texts)
    for key in ours:
        assert ours[key].dtype == np.int64
        np.testing.assert_array_equal(ours[key], theirs[key])
    assert ours["input_ids"].shape == (4, 12)


@pytest.mark.parametrize("spec,kwargs", [("image:test_efficientnet", {"img_size": 32}), ("image:test_vit", {}),
                                         ("image:tf_efficientnet_lite0", {})])
def test_image_pixels_equal_the_timm_transform(tmp_path, spec, kwargs):
    enc = create_encoder(spec, pretrained=False, **kwargs)
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (37, 91, 3), dtype=np.uint8)),  # wide
        Image.fromarray(rng.integers(0, 256, (300, 41, 3), dtype=np.uint8)),  # tall
        Image.fromarray(rng.integers(0, 256, (5, 5), dtype=np.uint8), mode="L"),  # tiny, grayscale
        Image.fromarray(rng.integers(0, 256, (35, 33, 3), dtype=np.uint8)),  # crop offsets of x.5: round() as torchvision
        Image.fromarray(rng.integers(0, 256, (33, 35, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (64, 64, 4), dtype=np.uint8), mode="RGBA"),  # alpha over white
        rng.integers(0, 65535, (40, 50), dtype=np.uint16),  # a 16-bit array
        None,
    ]
    ours, theirs = _both(enc, tmp_path, images)
    assert ours["pixel_values"].dtype == np.uint8
    np.testing.assert_array_equal(ours["pixel_values"], theirs["pixel_values"])


@pytest.mark.parametrize("orig,new", [(44100, 16000), (8000, 16000), (22050, 16000), (16000, 16000), (48000, 32000)])
def test_numpy_resampling_matches_torchaudio(orig, new):
    wave = np.random.default_rng(1).standard_normal(orig // 3).astype(np.float32)
    ours = resample(wave, orig, new)
    theirs = AF.resample(torch.from_numpy(wave), orig, new).numpy()
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_audio_mel_waveforms_equal_the_encoder_preprocessor(tmp_path):
    enc = create_encoder("audio-mel:test_efficientnet", pretrained=False, max_seconds=0.5)
    rng = np.random.default_rng(2)
    clips = [(rng.standard_normal((2, 30000)).astype(np.float32), 44100),  # stereo, resampled, cropped
             (rng.standard_normal(3000).astype(np.float32), 16000), None,
             ((rng.standard_normal(4000) * 3000).astype(np.int16), 8000)]  # int16 PCM
    ours, theirs = _both(enc, tmp_path, clips)
    np.testing.assert_array_equal(ours["lengths"], theirs["lengths"])
    np.testing.assert_allclose(ours["waveform"], theirs["waveform"], atol=2e-5)


def test_wav2vec2_features_equal_the_feature_extractor(tmp_path, tiny_audio_dir):
    enc = create_encoder(f"audio:{tiny_audio_dir}", pretrained=False, max_seconds=1.0)
    rng = np.random.default_rng(3)
    clips = [(rng.standard_normal(9000).astype(np.float32), 16000), (rng.standard_normal(30000).astype(np.float32), 22050),
             None]
    ours, theirs = _both(enc, tmp_path, clips)
    np.testing.assert_array_equal(ours["attention_mask"], theirs["attention_mask"])
    np.testing.assert_allclose(ours["input_values"], theirs["input_values"], atol=1e-4)


def test_bad_samples_fail_like_training(tmp_path, tiny_text_dir):
    enc = create_encoder("image:test_efficientnet", pretrained=False, img_size=32)
    pre = build_preprocessor(describe_encoder(enc, str(tmp_path), "image"), str(tmp_path))
    with pytest.raises(ValueError, match="image sample 1"):
        pre([None, np.zeros((2, 3, 4, 5))])
    text = build_preprocessor(describe_encoder(create_encoder(f"text:{tiny_text_dir}"), str(tmp_path), "text"),
                              str(tmp_path))
    with pytest.raises(TypeError, match="text sample 0"):
        text([3])


def test_unknown_encoders_and_specs_are_refused(tmp_path):
    from torch import nn

    class Odd(nn.Module):
        spec = "odd:1"

    with pytest.raises(DeployError, match="export knows the preprocessing"):
        describe_encoder(Odd(), str(tmp_path), "odd")
    with pytest.raises(DeployError, match="unknown preprocessing kind"):
        build_preprocessor({"kind": "spectrogram"}, str(tmp_path))
