"""Augmentation: seeded per batch (same indices and epoch -> same result), global RNGs untouched, mixing labels,
SpecAugment masks reaching the log-mel, and augmented modalities bypassing the feature cache."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from encoders import create_encoder
from fusion import create_fusion
from multimodal.config.schema import AugmentConfig
from multimodal.data.augment import AudioAugment, BatchMixer, live_modalities, train_preprocessors
from multimodal.data.loading import Collator, SeededIndex
from multimodal.models import MultimodalModel, TaskHead


def _model():
    encoders = {"image": create_encoder("image:test_efficientnet", pretrained=False, img_size=32),
                "audio": create_encoder("audio-mel:test_efficientnet", pretrained=False, max_seconds=0.5)}
    fusion = create_fusion("concat", {m: e.output_dim for m, e in encoders.items()}, 8)
    return MultimodalModel(encoders, fusion=fusion, head=TaskHead(8, 3))


def _samples(seed: int, indices=(0, 1, 2, 3)) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"image": rng.integers(0, 255, (24, 24, 3), dtype=np.uint8),
             "audio": (rng.normal(0, 0.1, 8000).astype(np.float32), 16000),
             "label": i % 3, "index": SeededIndex(i, seed), "aug_seed": seed} for i in indices]


AUG = AugmentConfig(image_auto_augment="randaugment", image_hflip=0.0, audio_gain_db=6.0, audio_shift_seconds=0.1,
                    spec_freq_masks=2, spec_time_masks=2, mixup_alpha=0.4)


def _collator(model, aug=AUG):
    return Collator(train_preprocessors(model, aug), "single_label", BatchMixer(3, "single_label", aug.mixup_alpha, 0.0))


def test_seeded_identical_and_global_rngs_untouched():
    model = _model()
    collate = _collator(model)
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    states = (torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    a, b, c = collate(_samples(7)), collate(_samples(7)), collate(_samples(8))
    assert torch.equal(torch.random.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]
    for m in ("image", "audio"):
        for k in a["inputs"][m]:
            assert torch.equal(a["inputs"][m][k], b["inputs"][m][k]), (m, k)
    assert torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["inputs"]["audio"]["waveform"], c["inputs"]["audio"]["waveform"])
    assert a["labels"].shape == (4, 3) and torch.allclose(a["labels"].sum(1), torch.ones(4))
    assert a["inputs"]["audio"]["spec_masks"].shape == (4, 4, 3)
    out = model(inputs=a["inputs"], present=a["present"], labels=a["labels"])  # soft targets train
    assert torch.isfinite(out.loss)


def test_mixup_mixes_inputs_and_labels_with_the_same_lambda():
    mixer = BatchMixer(2, "single_label", mixup_alpha=1.0, cutmix_alpha=0.0)
    x = torch.tensor([[0.0], [10.0]])
    batch = {"inputs": {"audio": {"waveform": x, "lengths": torch.tensor([1, 1])}},
             "present": {"audio": torch.tensor([True, True])}, "labels": torch.tensor([0, 1])}
    np.random.seed(0)
    out = mixer(batch)
    lam = float(out["labels"][0, 0])
    assert 0 < lam < 1 and torch.allclose(out["inputs"]["audio"]["waveform"][0], torch.tensor([10.0 * (1 - lam)]))


def test_cutmix_pastes_a_box_and_corrects_lambda():
    mixer = BatchMixer(2, "single_label", mixup_alpha=0.0, cutmix_alpha=1.0)
    pixels = torch.stack([torch.zeros(3, 16, 16, dtype=torch.uint8), torch.full((3, 16, 16), 200, dtype=torch.uint8)])
    batch = {"inputs": {"image": {"pixel_values": pixels}}, "present": {"image": torch.tensor([True, True])},
             "labels": torch.tensor([0, 1])}
    np.random.seed(3)
    out = mixer(batch)
    share = float((out["inputs"]["image"]["pixel_values"][0] == 200).float().mean())
    assert share > 0 and out["labels"][0, 1] == pytest.approx(share)


def test_spec_masks_zero_bands_of_the_log_mel():
    enc = create_encoder("audio-mel:test_efficientnet", pretrained=False, max_seconds=0.5, resize=None,
                         n_mels=64)
    wrapped = AudioAugment(enc.get_preprocessor(True), freq_masks=1, time_masks=0, freq_width=0.5)
    np.random.seed(1)
    inputs = wrapped([(np.random.normal(0, 0.1, 8000).astype(np.float32), 16000)])
    inputs["spec_masks"] = torch.tensor([[[0.0, 0.25, 0.5]]])  # mel bins [16, 48) of 64
    captured = {}
    original = enc.backbone.forward_features

    def capture(x):
        captured["x"] = x
        return original(x)

    enc.backbone.forward_features = capture
    enc(inputs)
    spec = captured["x"][0, 0]
    assert torch.equal(spec[16:48], torch.zeros_like(spec[16:48])) and spec[:16].abs().sum() > 0


def test_augmented_modalities_are_live_not_cached():
    model = _model()
    assert live_modalities(model, AugmentConfig()) == []
    assert live_modalities(model, AugmentConfig(audio_gain_db=3.0)) == ["audio"]
    assert live_modalities(model, AugmentConfig(image_auto_augment="trivialaugment")) == ["image"]
    assert sorted(live_modalities(model, AugmentConfig(mixup_alpha=0.2))) == ["audio", "image"]
