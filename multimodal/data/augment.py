"""Training-time augmentation, seeded by the collate function (`multimodal.data.loading.Collator`).

Everything random here draws from numpy's / torch's / Python's global RNGs *inside* the Collator's
``seeded_rngs`` block, which seeds them from (seed, epoch, sample indices) and restores them afterwards, so a
resumed run sees the same augmentations and the global RNGs are untouched.

- **Images**: timm's train transform for the encoder's data config, with RandAugment / TrivialAugment
  (``timm.data.create_transform(auto_augment=...)``) and the crop scale, flip and colour jitter set here.
- **Audio**: random gain and circular time shift on the waveform (any audio encoder; random cropping of long
  clips is the encoders' own train mode), SpecAugment frequency / time masks for ``audio-mel`` encoders
  (drawn here, applied on the log-mel inside the encoder's forward).
- **Batches**: mixup (images and audio) and cutmix (images) through timm's helpers (``mixup_target``,
  ``cutmix_bbox_and_lam``), with soft targets that `TaskHead.loss` accepts.

The feature cache stores eval-mode features, so a modality that is augmented is never read from it: it takes
the live path (preprocessing + encoder every batch) even when its encoder is frozen (`live_modalities`).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from encoders.audio import to_mono_float
from encoders.image import ImagePreprocessor

PRESETS = {"randaugment": "rand-m9-mstd0.5-inc1", "trivialaugment": "rand-n1-m10-mstd101-inc1"}


def _image_options(aug: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if aug.image_auto_augment:
        out["auto_augment"] = PRESETS.get(aug.image_auto_augment, aug.image_auto_augment)
    if aug.image_scale is not None:
        out["scale"] = tuple(float(v) for v in aug.image_scale)
    if aug.image_hflip is not None:
        out["hflip"] = float(aug.image_hflip)
    if aug.image_color_jitter is not None:
        out["color_jitter"] = float(aug.image_color_jitter)
    return out


def _audio_on(aug: Any) -> bool:
    return bool(aug.audio_gain_db or aug.audio_shift_seconds or aug.spec_freq_masks or aug.spec_time_masks)


def _mixing(aug: Any) -> bool:
    return bool(aug.mixup_alpha > 0 or aug.cutmix_alpha > 0)


def live_modalities(model: Any, aug: Any) -> list[str]:
    """Modalities that training augments, so they must not come from the feature cache."""
    if aug is None:
        return []
    if _mixing(aug):
        return list(model.encoders)
    out = []
    for m, enc in model.encoders.items():
        if (enc.modality == "image" and _image_options(aug)) or (enc.modality == "audio" and _audio_on(aug)):
            out.append(m)
    return out


class AudioAugment:
    """Picklable wrapper of an audio preprocessor: random gain and time shift, then SpecAugment masks."""

    def __init__(self, base: Any, gain_db: float = 0.0, shift_seconds: float = 0.0, freq_masks: int = 0,
                 freq_width: float = 0.15, time_masks: int = 0, time_width: float = 0.1) -> None:
        self.base, self.gain_db, self.shift_seconds = base, float(gain_db), float(shift_seconds)
        self.freq_masks, self.freq_width = int(freq_masks), float(freq_width)
        self.time_masks, self.time_width = int(time_masks), float(time_width)

    def _wave(self, item: Any, index: int) -> Any:
        if item is None:
            return None
        wave, sr = item
        wave = to_mono_float(wave, index)
        if self.gain_db:
            wave = wave * np.float32(10 ** (np.random.uniform(-self.gain_db, self.gain_db) / 20))
        if self.shift_seconds:
            wave = np.roll(wave, int(np.random.uniform(-self.shift_seconds, self.shift_seconds) * int(sr)))
        return (np.ascontiguousarray(wave, dtype=np.float32), sr)

    def __call__(self, batch: list) -> dict[str, torch.Tensor]:
        out = self.base([self._wave(item, i) for i, item in enumerate(batch)])
        k = self.freq_masks + self.time_masks
        if k:
            masks = np.zeros((len(batch), k, 3), dtype=np.float32)
            for i in range(len(batch)):
                for j in range(k):
                    time = j >= self.freq_masks
                    width = np.random.uniform(0, self.time_width if time else self.freq_width)
                    masks[i, j] = (1.0 if time else 0.0, np.random.uniform(0, 1 - width), width)
            out["spec_masks"] = torch.from_numpy(masks)
        return out


def train_preprocessors(model: Any, aug: Any) -> dict[str, Any]:
    """The model's train-mode preprocessors, with the configured augmentation wrapped around them."""
    import timm.data

    preprocessors = model.get_preprocessors(True)
    if aug is None:
        return preprocessors
    image_opts = _image_options(aug)
    for m, enc in model.encoders.items():
        if enc.modality == "image" and image_opts and hasattr(enc, "data_config"):
            transform = timm.data.create_transform(**enc.data_config, is_training=True, use_prefetcher=True, **image_opts)
            preprocessors[m] = ImagePreprocessor(transform, enc.data_config["input_size"])
        elif enc.modality == "audio" and _audio_on(aug):
            preprocessors[m] = AudioAugment(preprocessors[m], aug.audio_gain_db, aug.audio_shift_seconds,
                                            aug.spec_freq_masks, aug.spec_freq_mask_width, aug.spec_time_masks,
                                            aug.spec_time_mask_width)
    return preprocessors


def _mix(x: torch.Tensor, lam: float) -> torch.Tensor:
    mixed = x.float() * lam + x.flip(0).float() * (1.0 - lam)
    return mixed.round().clamp(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else mixed.to(x.dtype)


class BatchMixer:
    """Picklable batch transform: mixup / cutmix of each sample with the batch reversed (timm's pairing)."""

    def __init__(self, num_classes: int, label_type: str, mixup_alpha: float, cutmix_alpha: float,
                 prob: float = 1.0, smoothing: float = 0.0) -> None:
        self.num_classes, self.label_type = int(num_classes), label_type
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.smoothing = float(prob), float(smoothing)

    def __call__(self, batch: dict) -> dict:
        from timm.data.mixup import cutmix_bbox_and_lam, mixup_target

        labels = batch.get("labels")
        if labels is None or labels.shape[0] < 2 or np.random.rand() >= self.prob:
            return batch
        cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or np.random.rand() < 0.5)
        alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
        lam = float(np.random.beta(alpha, alpha))
        inputs = batch["inputs"]
        if cutmix:
            for m, x in inputs.items():
                pixels = x["pixel_values"]
                (yl, yh, xl, xh), lam = cutmix_bbox_and_lam(pixels.shape, lam)
                pixels = pixels.clone()
                pixels[:, :, yl:yh, xl:xh] = pixels.flip(0)[:, :, yl:yh, xl:xh]
                inputs[m] = {**x, "pixel_values": pixels}
        else:
            for m, x in inputs.items():
                mixed = {}
                for key, value in x.items():
                    if key in ("lengths", "attention_mask"):  # the pair's union
                        mixed[key] = torch.maximum(value, value.flip(0))
                    elif key == "spec_masks":
                        mixed[key] = value
                    else:
                        mixed[key] = _mix(value, lam)
                inputs[m] = mixed
        for m, present in batch["present"].items():
            batch["present"][m] = present | present.flip(0)
        batch["labels"] = mixup_target(labels, self.num_classes, lam, self.smoothing,
                                       multi_label=self.label_type == "multi_label")
        return batch


def batch_mixer(model: Any, aug: Any, label_type: Optional[str]) -> Optional[BatchMixer]:
    """The configured mixup / cutmix transform for training batches, or None."""
    if aug is None or not _mixing(aug):
        return None
    head = getattr(model, "head", None)
    return BatchMixer(head.num_outputs, label_type, aug.mixup_alpha, aug.cutmix_alpha, aug.mix_prob, aug.label_smoothing)
