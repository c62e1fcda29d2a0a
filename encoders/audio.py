"""Audio encoders from transformers: wav2vec2 / HuBERT / WavLM, the Whisper encoder and AST.

The preprocessor turns `(waveform, sample_rate)` tuples into model inputs: stereo -> mono (channel mean),
resampling to the model's rate with `torchaudio.functional.resample` (from a rate with bounded up/down factors:
`encoders.samples.bounded_rate`), truncation to `max_seconds`, then the
model's own feature extractor. The per-sample attention mask becomes a per-token mask on the outputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Optional

import numpy as np
import torch

from encoders._hf import (
    config_from_dict,
    hf_call,
    load_config,
    quiet_hf,
    refuse_remote_code,
    resolve_hf_source,
    set_hf_checkpointing,
)
from encoders.base import Encoder, EncoderError, EncoderOutput, jsonable, masked_mean
from encoders.samples import PLACEHOLDER_SECONDS, bounded_rate, to_mono_float
from encoders.samples import load_waveforms as _load_waveforms

__all__ = ["PLACEHOLDER_SECONDS", "WAVEFORM_MODELS", "HFAudioEncoder", "load_waveforms", "resample", "to_mono_float"]

# model_type -> how its output tokens relate to the inputs.
WAVEFORM_MODELS = ("wav2vec2", "hubert", "wavlm", "wav2vec2-conformer", "unispeech", "unispeech-sat", "data2vec-audio", "sew", "sew-d")


def resample(arr: np.ndarray, orig: int, target: int) -> np.ndarray:
    """Resample a mono float32 waveform with torchaudio.functional.resample, from `bounded_rate(orig, target)`
    (a rate coprime with `target`, e.g. 16001 Hz, would otherwise build an O(orig x target) filter bank)."""
    orig = bounded_rate(orig, target)
    if orig == int(target):
        return arr
    import torchaudio.functional as AF

    out = AF.resample(torch.from_numpy(np.ascontiguousarray(arr)), orig, int(target))
    return out.numpy()


def load_waveforms(
    batch: list, sample_rate: int, max_seconds: Optional[float], train: bool = False,
    resampler: Callable[[np.ndarray, int, int], np.ndarray] = resample,
    placeholder_seconds: float = PLACEHOLDER_SECONDS,
) -> list[np.ndarray]:
    """Raw audio samples -> mono float32 arrays at `sample_rate` (`encoders.samples.load_waveforms` with
    torchaudio's resampler by default)."""
    return _load_waveforms(batch, sample_rate, max_seconds, train, resampler, placeholder_seconds)


class HFAudioPreprocessor:
    """Picklable: (waveform, sr) tuples -> the feature extractor's tensors plus a sample-level mask."""

    def __init__(self, feature_extractor: Any, model_type: str, max_seconds: Optional[float]) -> None:
        self.feature_extractor = feature_extractor
        self.model_type = model_type
        self.max_seconds = max_seconds
        self.sample_rate = int(feature_extractor.sampling_rate)

    def __call__(self, batch: list, train: bool = False) -> dict[str, torch.Tensor]:
        waves = load_waveforms(batch, self.sample_rate, self.max_seconds, train=train)
        fe = self.feature_extractor
        if self.model_type == "whisper":
            out = fe(waves, sampling_rate=self.sample_rate, return_tensors="pt", return_attention_mask=True)
            return {"input_features": out["input_features"], "attention_mask": out["attention_mask"].long()}
        if self.model_type == "audio-spectrogram-transformer":
            out = fe(waves, sampling_rate=self.sample_rate, return_tensors="pt")
            return {"input_values": out["input_values"]}
        out = fe(
            waves, sampling_rate=self.sample_rate, return_tensors="pt", padding="longest", return_attention_mask=True
        )
        mask = out.get("attention_mask")
        if mask is None:
            lengths = torch.tensor([len(w) for w in waves])
            mask = (torch.arange(out["input_values"].shape[1])[None] < lengths[:, None]).long()
        return {"input_values": out["input_values"], "attention_mask": mask.long()}


class _TrainPreprocessor:
    """Picklable binding of `train=True`."""

    def __init__(self, inner: HFAudioPreprocessor) -> None:
        self.inner = inner

    def __call__(self, batch: list) -> dict[str, torch.Tensor]:
        return self.inner(batch, train=True)


def default_feature_extractor(config: Any) -> Any:
    """A feature extractor matching a model config, for models built from `model_config`."""
    from transformers import ASTFeatureExtractor, Wav2Vec2FeatureExtractor, WhisperFeatureExtractor

    model_type = config.model_type
    if model_type == "whisper":
        frames = int(config.max_source_positions) * 2
        hop = 160
        sr = 16000
        if (frames * hop) % sr:
            raise EncoderError(
                f"whisper model_config: max_source_positions={config.max_source_positions} gives {frames} mel frames, "
                "not a whole number of seconds at 16 kHz / hop 160; use a multiple of 50 or pass feature_extractor="
            )
        return WhisperFeatureExtractor(
            feature_size=int(config.num_mel_bins), sampling_rate=sr, hop_length=hop, chunk_length=frames * hop // sr
        )
    if model_type == "audio-spectrogram-transformer":
        return ASTFeatureExtractor(num_mel_bins=int(config.num_mel_bins), max_length=int(config.max_length))
    if model_type in WAVEFORM_MODELS:
        return Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
            return_attention_mask=getattr(config, "feat_extract_norm", "layer") == "layer",
        )
    raise EncoderError(f"no default feature extractor for model_type {model_type!r}; pass feature_extractor=<dir>")


def build_audio_backbone(config: Any) -> torch.nn.Module:
    """Random-weight audio backbone from a config (Whisper: the encoder only)."""
    from transformers import AutoModel

    with quiet_hf():
        if config.model_type == "whisper":
            from transformers.models.whisper.modeling_whisper import WhisperEncoder

            return WhisperEncoder(config)
        model = AutoModel.from_config(config, trust_remote_code=False)  # never code from a folder
    if getattr(config, "is_encoder_decoder", False):
        model = model.get_encoder()
    return model


class HFAudioEncoder(Encoder):
    """A transformers audio backbone plus its feature extractor."""

    modality = "audio"

    def __init__(
        self, backbone: torch.nn.Module, feature_extractor: Any, spec: str, max_seconds: Optional[float] = 10.0
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_extractor = feature_extractor
        self.spec = spec
        self.model_type = backbone.config.model_type
        self.max_seconds = float(max_seconds) if max_seconds else None
        if self.model_type == "whisper":
            chunk = float(feature_extractor.chunk_length)
            self.max_seconds = min(self.max_seconds, chunk) if self.max_seconds else chunk
        self.output_dim = int(getattr(backbone.config, "hidden_size", None) or backbone.config.d_model)
        self.token_dim = self.output_dim  # tokens are the last hidden states
        self.pass_attention_mask = bool(getattr(feature_extractor, "return_attention_mask", False))

    @classmethod
    def create(
        cls,
        name: str,
        pretrained: bool = True,
        max_seconds: Optional[float] = 10.0,
        model_config: Optional[dict] = None,
        feature_extractor: Optional[str] = None,
    ) -> HFAudioEncoder:
        """Build `audio:<hub id or local dir>` (or a random model from `model_config`)."""
        from transformers import AutoFeatureExtractor, AutoModel

        spec = f"audio:{name}"
        if model_config is not None:
            if pretrained:
                raise EncoderError("model_config builds random weights: pass pretrained=False with it")
            config = config_from_dict(model_config)
            backbone = build_audio_backbone(config)
            if feature_extractor is not None:
                fe = hf_call("audio", name, "the feature extractor",
                             lambda: AutoFeatureExtractor.from_pretrained(feature_extractor))
            else:
                fe = default_feature_extractor(config)
            return cls(backbone, fe, spec, max_seconds)

        source, path = resolve_hf_source(name)
        fe = hf_call("audio", name, "the feature extractor",
                     lambda: AutoFeatureExtractor.from_pretrained(feature_extractor or path))
        if pretrained:
            config = load_config("audio", name, source, path)
            if config.model_type == "whisper" or getattr(config, "is_encoder_decoder", False):
                full = hf_call("audio", name, "the model weights", lambda: AutoModel.from_pretrained(path))
                backbone = full.get_encoder()
            else:
                backbone = hf_call("audio", name, "the model weights", lambda: AutoModel.from_pretrained(path))
        else:
            backbone = build_audio_backbone(load_config("audio", name, source, path))
        return cls(backbone, fe, spec, max_seconds)

    @classmethod
    def from_config(cls, config: dict[str, Any], assets_dir: Optional[str], trust_remote_code: bool = False) -> HFAudioEncoder:
        """Rebuild with random weights from `get_config()` and the files `save_assets` wrote (code in
        `assets_dir` runs only with the caller's `trust_remote_code`)."""
        from transformers import AutoConfig, AutoFeatureExtractor

        if not assets_dir or not os.path.isfile(os.path.join(assets_dir, "config.json")):
            raise EncoderError(f"audio encoder assets (config.json, preprocessor_config.json) not found in {assets_dir!r}")
        trc = bool(trust_remote_code)
        with refuse_remote_code(assets_dir):
            hf_config = AutoConfig.from_pretrained(assets_dir, trust_remote_code=trc)
            fe = AutoFeatureExtractor.from_pretrained(assets_dir, trust_remote_code=trc)
        return cls(build_audio_backbone(hf_config), fe, config["spec"], config.get("max_seconds"))

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        """Run the backbone; tokens = last hidden states, pooled = mean over real tokens (AST: its pooler)."""
        mt = self.model_type
        if mt == "whisper":
            hidden = self.backbone(input_features=inputs["input_features"]).last_hidden_state
            frame_mask = inputs.get("attention_mask")
            if frame_mask is None:
                mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
            else:
                # two convs, the second with stride 2: token t covers mel frames 2t, 2t+1
                mask = frame_mask[:, ::2][:, : hidden.shape[1]].bool()
            return EncoderOutput(pooled=masked_mean(hidden, mask), tokens=hidden, mask=mask)
        if mt == "audio-spectrogram-transformer":
            out = self.backbone(input_values=inputs["input_values"])
            hidden = out.last_hidden_state
            mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
            return EncoderOutput(pooled=out.pooler_output, tokens=hidden, mask=mask)
        values = inputs["input_values"]
        sample_mask = inputs.get("attention_mask")
        kwargs = {}
        if sample_mask is not None and self.pass_attention_mask:
            kwargs["attention_mask"] = sample_mask
        hidden = self.backbone(input_values=values, **kwargs).last_hidden_state
        if sample_mask is None:
            mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        else:
            mask = self._feature_mask(hidden.shape[1], sample_mask)
        return EncoderOutput(pooled=masked_mean(hidden, mask), tokens=hidden, mask=mask)

    def _feature_mask(self, length: int, sample_mask: torch.Tensor) -> torch.Tensor:
        """Sample-level mask -> token-level mask via the conv feature extractor's output lengths."""
        fn = getattr(self.backbone, "_get_feature_vector_attention_mask", None)
        if fn is not None:
            return fn(length, sample_mask.long()).bool()
        lengths_fn = getattr(self.backbone, "_get_feat_extract_output_lengths", None)
        if lengths_fn is None:
            raise EncoderError(f"{self.spec}: cannot map the sample mask to tokens for {self.model_type}")
        lengths = lengths_fn(sample_mask.sum(-1)).to(torch.long)
        return torch.arange(length, device=sample_mask.device)[None] < lengths[:, None]

    def get_preprocessor(self, train: bool = False):
        """Mono, resample, truncate to max_seconds (random crop when training), feature extractor."""
        inner = HFAudioPreprocessor(self.feature_extractor, self.model_type, self.max_seconds)
        return _TrainPreprocessor(inner) if train else inner

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Enable/disable HF gradient checkpointing on the backbone."""
        set_hf_checkpointing(self.backbone, self.spec, enable)

    def get_config(self) -> dict[str, Any]:
        """JSON description: spec, model type, max_seconds."""
        return {
            "kind": "audio",
            "spec": self.spec,
            "name": self.spec.split(":", 1)[1],
            "model_type": self.model_type,
            "max_seconds": self.max_seconds,
            "output_dim": self.output_dim,
        }

    def save_assets(self, directory: str) -> None:
        """Write the HF config.json and preprocessor_config.json."""
        os.makedirs(directory, exist_ok=True)
        self.backbone.config.save_pretrained(directory)
        self.feature_extractor.save_pretrained(directory)

    def preprocess_config(self) -> dict[str, Any]:
        """What changes the model inputs: the feature extractor's settings and max_seconds."""
        fe = self.feature_extractor.to_dict()
        fe.pop("mel_filters", None)
        fe.pop("window", None)
        return {"kind": "audio", "model_type": self.model_type, "max_seconds": self.max_seconds,
                "feature_extractor": jsonable(fe)}
