"""Audio encoders: wav2vec2 from a local dir, Whisper encoder and AST from tiny configs, log-mel + timm."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from encoders import EncoderError, create_encoder, encoder_from_config
from encoders.audio import load_waveforms

WHISPER_TINY = {
    "model_type": "whisper", "d_model": 32, "encoder_layers": 1, "decoder_layers": 1,
    "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
    "num_mel_bins": 16, "max_source_positions": 50, "max_target_positions": 16,
}
AST_TINY = {
    "model_type": "audio-spectrogram-transformer", "hidden_size": 32, "num_hidden_layers": 1,
    "num_attention_heads": 2, "intermediate_size": 64, "num_mel_bins": 32, "max_length": 64,
    "frequency_stride": 16, "time_stride": 16, "patch_size": 16,
}


def _tone(seconds: float, sr: int, freq: float = 440.0, channels: int = 0) -> tuple[np.ndarray, int]:
    t = np.arange(int(seconds * sr), dtype=np.float32) / sr
    wave = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    if channels:
        wave = np.stack([wave * (c + 1) / channels for c in range(channels)])
    return wave, sr


@pytest.fixture(scope="module")
def tiny_w2v(tiny_audio_dir):
    return create_encoder(f"audio:{tiny_audio_dir}", max_seconds=2.0)


def test_waveform_loading_mono_resample_truncate():
    waves = load_waveforms(
        [_tone(0.5, 8000), _tone(1.0, 44100, channels=2), _tone(3.0, 16000), None], 16000, max_seconds=2.0
    )
    assert [len(w) for w in waves] == [8000, 16000, 32000, 16000]
    assert all(w.dtype == np.float32 for w in waves)
    # stereo is averaged: channel gains 0.5 and 1.0 -> 0.75 of the tone's amplitude 0.5
    assert abs(float(np.abs(waves[1]).max()) - 0.375) < 0.02
    assert not waves[3].any()
    # soundfile's [T, C] layout is accepted too
    stereo_tc = np.ascontiguousarray(_tone(0.25, 16000, channels=2)[0].T)
    assert load_waveforms([(stereo_tc, 16000)], 16000, None)[0].shape == (4000,)
    with pytest.raises(ValueError, match="audio sample 1"):
        load_waveforms([_tone(0.1, 16000), (np.zeros(0, np.float32), 16000)], 16000, None)
    with pytest.raises(TypeError, match="audio sample 0"):
        load_waveforms([np.zeros(10, np.float32)], 16000, None)


def test_wav2vec2_forward_backward_masks(tiny_w2v):
    enc = tiny_w2v.train()
    assert enc.modality == "audio" and enc.output_dim == 32
    raw = [_tone(0.5, 8000), _tone(1.0, 44100, channels=2), _tone(3.0, 16000), None]
    batch = enc.preprocess(raw)
    assert batch["input_values"].shape == (4, 32000)
    assert batch["attention_mask"].sum(-1).tolist() == [8000, 16000, 32000, 16000]
    out = enc(batch)
    B, T, D = out.tokens.shape
    assert (B, D) == (4, 32) and out.pooled.shape == (4, 32) and out.mask.shape == (4, T)
    lengths = out.mask.sum(-1)
    assert lengths[2] == T and lengths[0] < lengths[1] < T
    expected = enc.backbone._get_feat_extract_output_lengths(torch.tensor(8000))
    assert int(lengths[0]) == int(expected)
    out.pooled.sum().backward()
    assert enc.backbone.feature_extractor.conv_layers[0].conv.weight.grad is not None
    enc.zero_grad(set_to_none=True)


def test_wav2vec2_pooling_is_masked_mean(tiny_w2v):
    enc = tiny_w2v.eval()
    with torch.no_grad():
        out = enc(enc.preprocess([_tone(0.5, 16000, freq=300.0), _tone(1.5, 16000)]))
    n = int(out.mask[0].sum())
    assert n < out.mask.shape[1]
    torch.testing.assert_close(out.pooled[0], out.tokens[0, :n].mean(0))
    assert not torch.allclose(out.pooled[0], out.tokens[0].mean(0))


def test_preprocessor_pickles_and_train_crops(tiny_w2v):
    for train in (False, True):
        pre = pickle.loads(pickle.dumps(tiny_w2v.get_preprocessor(train=train)))
        out = pre([_tone(5.0, 16000), None])
        assert out["input_values"].shape == (2, 32000)


def test_freeze_unfreeze(tiny_audio_dir):
    enc = create_encoder(f"audio:{tiny_audio_dir}")
    enc.freeze().train()
    assert not enc.backbone.training and not any(p.requires_grad for p in enc.parameters())
    out = enc(enc.preprocess([_tone(0.5, 16000)]))
    assert not out.pooled.requires_grad
    enc.unfreeze().train()
    assert enc.backbone.training
    enc(enc.preprocess([_tone(0.5, 16000)])).pooled.sum().backward()
    assert all(p.grad is not None for n, p in enc.named_parameters() if "masked_spec_embed" not in n)


def test_local_dir_pretrained_false_is_random(tiny_audio_dir, tiny_w2v):
    enc = create_encoder(f"audio:{tiny_audio_dir}", pretrained=False)
    a, b = tiny_w2v.state_dict(), enc.state_dict()
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)


def test_wav2vec2_rebuild_from_config(tiny_w2v, tmp_path):
    enc = tiny_w2v.eval()
    enc.save_assets(str(tmp_path))
    rebuilt = encoder_from_config(enc.get_config(), str(tmp_path)).eval()
    rebuilt.load_state_dict(enc.state_dict(), strict=True)
    raw = [_tone(0.3, 22050), None]
    x = enc.preprocess(raw)
    assert torch.equal(x["input_values"], rebuilt.preprocess(raw)["input_values"])
    with torch.no_grad():
        a, b = enc(x), rebuilt(x)
    assert torch.equal(a.pooled, b.pooled) and torch.equal(a.mask, b.mask)


def test_whisper_encoder_from_tiny_config(tmp_path):
    enc = create_encoder("audio:openai/whisper-tiny", pretrained=False, model_config=WHISPER_TINY)
    assert type(enc.backbone).__name__ == "WhisperEncoder" and enc.output_dim == 32
    assert enc.max_seconds == 1.0  # the extractor's 1 s window for max_source_positions=50
    batch = enc.preprocess([_tone(0.5, 8000), _tone(2.0, 44100, channels=2), None])
    assert batch["input_features"].shape == (3, 16, 100)
    out = enc.train()(batch)
    assert out.tokens.shape == (3, 50, 32) and out.mask.shape == (3, 50)
    assert enc.token_dim == 32
    assert out.mask[1].all() and 20 <= int(out.mask[0].sum()) <= 30  # half a second of 1 s
    out.pooled.sum().backward()
    assert enc.backbone.conv1.weight.grad is not None
    # Whisper keeps its sinusoidal position table fixed; freeze/unfreeze must not make it trainable
    assert not enc.backbone.embed_positions.weight.requires_grad
    enc.freeze().unfreeze()
    assert not enc.backbone.embed_positions.weight.requires_grad and enc.backbone.conv1.weight.requires_grad
    enc.eval().save_assets(str(tmp_path))
    rebuilt = encoder_from_config(enc.get_config(), str(tmp_path)).eval()
    rebuilt.load_state_dict(enc.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(enc(batch).pooled, rebuilt(rebuilt.preprocess([_tone(0.5, 8000), _tone(2.0, 44100, channels=2), None])).pooled)


def test_whisper_local_dir_loads_encoder_weights(tmp_path):
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    params = {k: v for k, v in WHISPER_TINY.items() if k != "model_type"}
    torch.manual_seed(0)
    full = WhisperModel(WhisperConfig(**params))
    full.save_pretrained(tmp_path)
    WhisperFeatureExtractor(feature_size=16, chunk_length=1).save_pretrained(tmp_path)
    enc = create_encoder(f"audio:{tmp_path}")
    assert type(enc.backbone).__name__ == "WhisperEncoder"
    assert torch.equal(enc.backbone.conv1.weight, full.encoder.conv1.weight)
    assert not any(n.startswith("decoder") for n in dict(enc.named_parameters()))
    assert enc(enc.preprocess([_tone(0.4, 16000)])).pooled.shape == (1, 32)


def test_ast_from_tiny_config():
    enc = create_encoder("audio:MIT/ast-finetuned-audioset-10-10-0.4593", pretrained=False, model_config=AST_TINY)
    batch = enc.preprocess([_tone(0.3, 16000), _tone(1.0, 8000), None])
    assert batch["input_values"].shape == (3, 64, 32)
    out = enc.train()(batch)
    assert out.pooled.shape == (3, 32) and out.tokens.shape[0] == 3 and out.tokens.shape[2] == 32 == enc.token_dim
    out.pooled.sum().backward()
    assert enc.backbone.embeddings.patch_embeddings.projection.weight.grad is not None


def test_audio_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderError, match="HF_HUB_OFFLINE"):
        create_encoder("audio:some-org/nonexistent-wav2vec2")
    with pytest.raises(EncoderError, match="model_type"):
        create_encoder("audio:x/y", pretrained=False, model_config={"hidden_size": 8})
    with pytest.raises(EncoderError, match="pretrained=False"):
        create_encoder("audio:x/y", pretrained=True, model_config=WHISPER_TINY)


@pytest.fixture(scope="module")
def tiny_mel():
    return create_encoder("audio-mel:test_efficientnet", pretrained=False, max_seconds=1.0)


def test_audio_mel_forward_backward_masks(tiny_mel):
    enc = tiny_mel.train()
    assert enc.modality == "audio" and enc.output_dim == 256
    raw = [_tone(0.25, 8000), _tone(2.0, 44100, channels=2), None]
    batch = enc.preprocess(raw)
    assert batch["waveform"].shape == (3, 16000)
    assert batch["lengths"].tolist() == [4000, 16000, 16000]
    out = enc(batch)
    assert out.pooled.shape == (3, 256)
    assert out.tokens.shape[0] == 3 and out.tokens.shape[2] == 256 and out.mask.shape == out.tokens.shape[:2]
    assert out.mask[1].all() and 0 < int(out.mask[0].sum()) < out.mask.shape[1]
    out.pooled.sum().backward()
    assert enc.backbone.conv_stem.weight.grad is not None and enc.backbone.conv_stem.weight.shape[1] == 1


def test_audio_mel_frontend_standardises_real_frames(tiny_mel):
    wave = torch.from_numpy(_tone(1.0, 16000)[0])[None]
    spec, real = tiny_mel.frontend(torch.cat([wave, torch.zeros_like(wave)], 1), torch.tensor([16000]))
    assert spec.shape[:3] == (1, 1, tiny_mel.n_mels)
    frames = int(real[0])
    body = spec[0, 0, :, :frames]
    assert abs(float(body.mean())) < 1e-3 and abs(float(body.std()) - 1.0) < 0.05
    assert spec[0, 0, :, frames:].abs().max() == 0


def test_audio_mel_pickles_and_rebuilds(tiny_mel, tmp_path):
    pre = pickle.loads(pickle.dumps(tiny_mel.get_preprocessor(train=True)))
    assert pre([_tone(3.0, 16000)])["waveform"].shape == (1, 16000)
    enc = tiny_mel.eval()
    enc.save_assets(str(tmp_path))
    rebuilt = encoder_from_config(enc.get_config(), str(tmp_path)).eval()
    rebuilt.load_state_dict(enc.state_dict(), strict=True)
    x = enc.preprocess([_tone(0.5, 16000), None])
    with torch.no_grad():
        assert torch.equal(enc(x).pooled, rebuilt(x).pooled)


def test_audio_mel_from_checkpoint_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    rgb = timm.create_model("test_efficientnet", num_classes=0)
    path = tmp_path / "spectro.safetensors"
    save_file({k: v.contiguous() for k, v in rgb.state_dict().items()}, str(path))
    enc = create_encoder(f"audio-mel:{path}", model_name="test_efficientnet", max_seconds=0.5)
    torch.testing.assert_close(enc.backbone.conv_stem.weight, rgb.conv_stem.weight.sum(1, keepdim=True))
    assert enc(enc.preprocess([_tone(0.2, 16000)])).pooled.shape == (1, 256)


@pytest.mark.slow
def test_audio_mel_packaged_lite0_stem_is_summed_rgb():
    from encoders.weights import load_efficientnet_lite0_state_dict

    enc = create_encoder("audio-mel:tf_efficientnet_lite0", pretrained=True, max_seconds=1.0)
    rgb = load_efficientnet_lite0_state_dict(num_classes=0)["conv_stem.weight"]
    torch.testing.assert_close(enc.backbone.conv_stem.weight, rgb.sum(1, keepdim=True))
    torch.testing.assert_close(enc.backbone.bn2.running_var, load_efficientnet_lite0_state_dict()["bn2.running_var"])
    out = enc.eval()(enc.preprocess([_tone(1.0, 16000), None]))
    assert out.pooled.shape == (2, 1280) and torch.isfinite(out.pooled).all()
