"""Audio through a log-mel front end into a timm image backbone with one input channel.

Design choice: the preprocessor only does waveform work (mono, resample, pad/crop to `max_seconds`) and
returns `{"waveform": [B, N], "lengths": [B]}`; the mel spectrogram is computed inside `forward`, so it runs on
the same device as the backbone (GPU when there is one) and DataLoader workers stay light. The log-mel image
of each clip is standardised over its real frames (mean 0, std 1) and its padded frames are set to 0, so
padding looks neutral; that image, `[B, 1, n_mels, frames]`, feeds the backbone built with `in_chans=1`
(pretrained RGB stem filters summed to one channel, as timm does). Tokens are the backbone's feature map
flattened to `[B, H*W, C]`; the token mask marks feature columns that cover real (non-padded) audio.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from encoders._timm import (
    DEFAULT_POOL_STAGES,
    channels_last,
    create_timm_backbone,
    pooled_width,
    pooled_with_stages,
    resolve_pool_stages,
    resolve_timm_source,
    set_timm_checkpointing,
    tokens_from_features,
)
from encoders.audio import load_waveforms
from encoders.base import Encoder, EncoderError, EncoderOutput

NORMALIZE = ("clip", "global", "none")
# Chosen by measurement (README "Defaults", BENCHMARKS.md): what `create` uses when not told. A saved encoder
# keeps the values it was built with (its config stores them), whatever these become.
DEFAULT_RESIZE: Any = "pretrained"
DEFAULT_N_MELS = 128
DEFAULT_N_FFT = 1024
DEFAULT_HOP_LENGTH = 160


def resolve_input_size(resize: Any, backbone: nn.Module) -> Optional[tuple[int, int]]:
    """(H, W) the log-mel image is resized to: None (native n_mels x frames), "pretrained" (the backbone's
    pretrained_cfg input size, e.g. 224x224) or an explicit [H, W]."""
    if resize is None or resize is False:
        return None
    if resize == "pretrained":
        cfg = getattr(backbone, "pretrained_cfg", None) or {}
        size = cfg.get("input_size") or getattr(backbone, "default_cfg", {}).get("input_size")
        if not size:
            raise EncoderError("audio-mel resize='pretrained': the backbone has no pretrained_cfg input_size")
        return int(size[-2]), int(size[-1])
    if isinstance(resize, int) and not isinstance(resize, bool):
        return int(resize), int(resize)
    if isinstance(resize, (list, tuple)) and len(resize) == 2:
        return int(resize[0]), int(resize[1])
    raise EncoderError(f"audio-mel resize must be null, 'pretrained', an int or [H, W]; got {resize!r}")


def apply_spec_masks(spec: torch.Tensor, masks: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """SpecAugment: zero bands of a standardised log-mel [B, 1, M, F]. `masks` [B, K, 3] rows are (axis: 0 mel,
    1 time; start; width) as fractions of the mel bins / of the clip's real frames; width 0 is no mask."""
    bins, frames = spec.shape[-2], spec.shape[-1]
    keep = torch.ones(spec.shape[0], bins, frames, dtype=torch.bool, device=spec.device)
    mel_pos = torch.arange(bins, device=spec.device).float()[None, None]  # [1, 1, M]
    frame_pos = torch.arange(frames, device=spec.device).float()[None, None]  # [1, 1, F]
    masks = masks.to(spec.device).float()
    axis, start, width = masks[..., 0:1], masks[..., 1:2], masks[..., 2:3]  # [B, K, 1]
    span = torch.where(axis > 0.5, real.float()[:, None, None].expand_as(start), torch.full_like(start, bins))
    lo, hi = start * span, (start + width) * span
    mel_hit = ((mel_pos >= lo) & (mel_pos < hi) & (axis <= 0.5) & (width > 0)).any(1)  # [B, M]
    time_hit = ((frame_pos >= lo) & (frame_pos < hi) & (axis > 0.5) & (width > 0)).any(1)  # [B, F]
    keep &= ~mel_hit[:, :, None] & ~time_hit[:, None, :]
    return spec * keep.unsqueeze(1)


class MelPreprocessor:
    """Picklable: (waveform, sr) tuples -> fixed-length waveforms at `sample_rate` plus true lengths."""

    def __init__(self, sample_rate: int, max_seconds: float, train: bool = False) -> None:
        self.sample_rate = int(sample_rate)
        self.max_seconds = float(max_seconds)
        self.num_samples = int(round(self.max_seconds * self.sample_rate))
        self.train = bool(train)

    def __call__(self, batch: list) -> dict[str, torch.Tensor]:
        waves = load_waveforms(batch, self.sample_rate, self.max_seconds, train=self.train)
        out = np.zeros((len(waves), self.num_samples), dtype=np.float32)
        lengths = np.zeros(len(waves), dtype=np.int64)
        for i, w in enumerate(waves):
            n = min(len(w), self.num_samples)
            out[i, :n] = w[:n]
            lengths[i] = n
        return {"waveform": torch.from_numpy(out), "lengths": torch.from_numpy(lengths)}


class LogMel(nn.Module):
    """Waveform [B, N] -> standardised log-mel [B, 1, n_mels, frames] plus the real frame counts [B]."""

    def __init__(
        self, sample_rate: int, n_mels: int, n_fft: int, hop_length: int, f_min: float, f_max: Optional[float],
        normalize: str = "clip", norm_stats: Optional[tuple[float, float]] = None,
    ) -> None:
        super().__init__()
        import torchaudio

        if normalize not in NORMALIZE:
            raise EncoderError(f"audio-mel normalize must be one of {NORMALIZE}, got {normalize!r}")
        if normalize == "global" and (norm_stats is None or len(norm_stats) != 2 or float(norm_stats[1]) <= 0):
            raise EncoderError("audio-mel normalize='global' needs norm_stats=[mean, std] of the log-mel values")
        self.normalize = normalize
        self.norm_stats = (float(norm_stats[0]), float(norm_stats[1])) if norm_stats is not None else None
        self.hop_length = int(hop_length)
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, f_min=f_min, f_max=f_max,
            power=2.0, center=True,
        )
        self.eps = 1e-6

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            spec = torch.log(self.mel(waveform.float()) + self.eps)  # [B, n_mels, F]
        frames = spec.shape[-1]
        real = torch.clamp(lengths // self.hop_length + 1, min=1, max=frames)
        valid = (torch.arange(frames, device=spec.device)[None] < real[:, None]).unsqueeze(1)  # [B, 1, F]
        if self.normalize == "clip":
            count = (valid.sum(-1, keepdim=True) * spec.shape[1]).clamp_min(1)
            mean = (spec * valid).sum(dim=(1, 2), keepdim=True) / count
            var = (((spec - mean) * valid) ** 2).sum(dim=(1, 2), keepdim=True) / count
            spec = (spec - mean) / torch.sqrt(var + 1e-5)
        elif self.normalize == "global":
            spec = (spec - self.norm_stats[0]) / self.norm_stats[1]
        spec = spec * valid
        return spec.unsqueeze(1), real


class MelAudioEncoder(Encoder):
    """Log-mel front end + timm backbone (`in_chans=1`)."""

    modality = "audio"

    def __init__(
        self,
        backbone: nn.Module,
        spec: str,
        model_name: str,
        sample_rate: int = 16000,
        n_mels: int = DEFAULT_N_MELS,
        max_seconds: float = 5.0,
        n_fft: int = DEFAULT_N_FFT,
        hop_length: int = DEFAULT_HOP_LENGTH,
        f_min: float = 0.0,
        f_max: Optional[float] = None,
        timm_kwargs: Optional[dict[str, Any]] = None,
        resize: Any = None,
        normalize: str = "clip",
        norm_stats: Optional[tuple[float, float]] = None,
        pool_stages: Union[str, Sequence[int], None] = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.model_name = model_name
        self.sample_rate = int(sample_rate)
        self.n_mels = int(n_mels)
        self.max_seconds = float(max_seconds)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.f_min = float(f_min)
        self.f_max = None if f_max is None else float(f_max)
        self.timm_kwargs = dict(timm_kwargs or {})
        self.frontend = LogMel(self.sample_rate, self.n_mels, self.n_fft, self.hop_length, self.f_min, self.f_max,
                               normalize, norm_stats)
        self.backbone = backbone
        self.resize = list(resize) if isinstance(resize, tuple) else resize
        self.input_hw = resolve_input_size(resize, backbone)
        self.pool_stages = resolve_pool_stages(pool_stages, backbone, spec)
        self.output_dim = pooled_width(backbone, self.pool_stages)
        self.token_dim = int(backbone.num_features)

    @classmethod
    def create(
        cls,
        name: str,
        pretrained: bool = True,
        sample_rate: int = 16000,
        n_mels: int = DEFAULT_N_MELS,
        max_seconds: float = 5.0,
        n_fft: int = DEFAULT_N_FFT,
        hop_length: int = DEFAULT_HOP_LENGTH,
        f_min: float = 0.0,
        f_max: Optional[float] = None,
        model_name: Optional[str] = None,
        resize: Any = DEFAULT_RESIZE,
        normalize: str = "clip",
        norm_stats: Optional[tuple[float, float]] = None,
        pool_stages: Union[str, Sequence[int], None] = DEFAULT_POOL_STAGES,
        **timm_kwargs: Any,
    ) -> MelAudioEncoder:
        """Build `audio-mel:<timm name, hf-hub:repo, checkpoint file or dir>`; extra kwargs go to timm.
        `pool_stages`: timm feature_info stages whose global-average-pooled outputs are appended to `pooled`."""
        if max_seconds is None or float(max_seconds) <= 0:
            raise EncoderError("audio-mel needs a positive max_seconds (clips are padded/cropped to it)")
        if "in_chans" in timm_kwargs and int(timm_kwargs["in_chans"]) != 1:
            raise EncoderError("audio-mel backbones take one input channel; do not pass in_chans")
        timm_kwargs.pop("in_chans", None)
        source = resolve_timm_source("audio-mel", name, model_name)
        # a hub config's stored args are kept (so from_config rebuilds the same net), except its RGB in_chans
        timm_kwargs = {**{k: v for k, v in source.model_args.items() if k != "in_chans"}, **timm_kwargs}
        backbone = create_timm_backbone(
            source.arch, pretrained, "audio-mel", name, checkpoint=source.checkpoint, hub_id=source.hub_id,
            in_chans=1, **timm_kwargs,
        )
        return cls(backbone, f"audio-mel:{name}", source.arch, sample_rate, n_mels, max_seconds, n_fft, hop_length,
                   f_min, f_max, timm_kwargs, resize, normalize, norm_stats, pool_stages)

    @classmethod
    def from_config(cls, config: dict[str, Any], assets_dir: Optional[str] = None) -> MelAudioEncoder:
        """Rebuild (random weights) from `get_config()`; needs no files."""
        import timm

        kwargs = dict(config.get("timm_kwargs") or {})
        backbone = timm.create_model(config["model_name"], num_classes=0, pretrained=False, in_chans=1, **kwargs)
        encoder = cls(
            backbone, config["spec"], config["model_name"], config["sample_rate"], config["n_mels"],
            config["max_seconds"], config["n_fft"], config["hop_length"], config["f_min"], config["f_max"], kwargs,
            config.get("resize"), config.get("normalize", "clip"), config.get("norm_stats"),  # older folders: native
            config.get("pool_stages"),  # older folders: none
        )
        if config.get("input_size") is not None:  # what the saved encoder resolved, not this rebuild's default cfg
            encoder.input_hw = (int(config["input_size"][0]), int(config["input_size"][1]))
        return encoder

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        """waveform -> log-mel -> backbone; pooled from forward_head(pre_logits=True) (+ pooled `pool_stages`)."""
        waveform = inputs["waveform"]
        lengths = inputs.get("lengths")
        if lengths is None:
            lengths = torch.full((waveform.shape[0],), waveform.shape[1], dtype=torch.long, device=waveform.device)
        spec, real_frames = self.frontend(waveform, lengths.to(waveform.device))
        if inputs.get("spec_masks") is not None:  # SpecAugment, drawn by the (seeded) train preprocessing
            spec = apply_spec_masks(spec, inputs["spec_masks"], real_frames)
        native_frames = spec.shape[-1]
        if self.input_hw is not None and tuple(spec.shape[-2:]) != self.input_hw:
            spec = nn.functional.interpolate(spec, size=self.input_hw, mode="bilinear", align_corners=False)
        features, pooled = pooled_with_stages(self.backbone, spec, self.pool_stages)
        nhwc = channels_last(self.backbone)
        tokens = tokens_from_features(features, nhwc)
        if features.ndim == 4:
            frames = native_frames  # real_frames counts native frames; resizing keeps their share of the width
            rows, cols = (features.shape[1], features.shape[2]) if nhwc else (features.shape[-2], features.shape[-1])
            real_cols = torch.clamp(torch.ceil(real_frames.float() * cols / frames).long(), min=1, max=cols)
            col_mask = torch.arange(cols, device=tokens.device)[None] < real_cols[:, None]  # [B, W]
            mask = col_mask[:, None, :].expand(-1, rows, -1).reshape(tokens.shape[0], -1)
        else:
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(pooled=pooled, tokens=tokens, mask=mask)

    def get_preprocessor(self, train: bool = False) -> MelPreprocessor:
        """Mono, resample, pad/crop to max_seconds (random crop when training)."""
        return MelPreprocessor(self.sample_rate, self.max_seconds, train=train)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's set_grad_checkpointing."""
        set_timm_checkpointing(self.backbone, self.spec, enable)

    def get_config(self) -> dict[str, Any]:
        """JSON description: timm name, mel parameters, max_seconds."""
        return {
            "kind": "audio-mel",
            "spec": self.spec,
            "model_name": self.model_name,
            "sample_rate": self.sample_rate,
            "n_mels": self.n_mels,
            "max_seconds": self.max_seconds,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "f_min": self.f_min,
            "f_max": self.f_max,
            "timm_kwargs": self.timm_kwargs,
            "resize": self.resize,
            # the size "pretrained" resolved to here: a rebuild without the hub's pretrained_cfg keeps it
            "input_size": list(self.input_hw) if self.input_hw is not None else None,
            "normalize": self.frontend.normalize,
            "norm_stats": list(self.frontend.norm_stats) if self.frontend.norm_stats else None,
            "pool_stages": self.pool_stages,
            "output_dim": self.output_dim,
        }

    def preprocess_config(self) -> dict[str, Any]:
        """What changes the inputs the backbone sees: waveform settings and the mel front end."""
        config = self.get_config()
        config.pop("output_dim")
        return config
