"""`MultimodalModel`: encoders -> fusion -> task head (TorchMultimodal's late-fusion shape)."""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
import torch.nn.functional as F

from encoders import Encoder
from encoders.base import EncoderOutput
from fusion import Fusion, fusion_from_config
from multimodal.models.base import EncoderModel, register_model_type
from multimodal.models.compat import positional_deprecated
from multimodal.models.heads import TaskHead
from multimodal.models.output import ModelOutput


@register_model_type("fused")
class MultimodalModel(EncoderModel):
    """Per-modality encoders, one fusion and an optional task head, all injected:
    ``MultimodalModel(encoders, fusion=..., head=...)``.

    `forward(inputs, present, labels, features)` encodes (skipping modalities given as precomputed
    `features`), fuses with presence masks, applies the head and, with `labels`, its loss.
    `modality_dropout=p` drops whole modalities per sample at random while training (never all of a
    sample's modalities).
    """

    @positional_deprecated("fusion", "head", "modality_dropout")
    def __init__(
        self,
        encoders: dict[str, Encoder],
        *,
        fusion: Fusion,
        head: Optional[TaskHead] = None,
        modality_dropout: float = 0.0,
    ) -> None:
        super().__init__(encoders)
        if set(encoders) != set(fusion.modalities):
            raise ValueError(f"encoders {sorted(encoders)} do not match the fusion's modalities {fusion.modalities}")
        for m, enc in encoders.items():
            if int(getattr(enc, "output_dim", -1)) != fusion.input_dims[m]:
                raise ValueError(
                    f"encoder {m!r} outputs {getattr(enc, 'output_dim', None)} features but the fusion "
                    f"expects {fusion.input_dims[m]}"
                )
        if head is not None and head.in_dim != fusion.output_dim:
            raise ValueError(f"head.in_dim {head.in_dim} != fusion.output_dim {fusion.output_dim}")
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {modality_dropout}")
        self.fusion = fusion
        self.head = head
        self.modality_dropout = float(modality_dropout)

    @property
    def requires_tokens(self) -> bool:  # type: ignore[override]
        """Whether the fusion reads token sequences."""
        return bool(getattr(self.fusion, "requires_tokens", False))

    def encode(
        self, inputs: dict[str, dict[str, torch.Tensor]], present: Optional[dict[str, torch.Tensor]] = None
    ) -> dict[str, EncoderOutput]:
        """Deprecated: `encode_inputs(inputs)` (``encode`` embeds one modality, as `DualEncoder.encode` does)."""
        warnings.warn("MultimodalModel.encode(inputs, present) is deprecated: use encode_inputs(inputs) (encoder "
                      "outputs by modality; present was never used)", DeprecationWarning, stacklevel=2)
        return self.encode_inputs(inputs)

    def _drop_modalities(self, present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Drop each present modality with probability p per sample, keeping at least one where there was one."""
        mods = self.modalities
        keep = torch.stack([present[m] for m in mods], dim=1)  # [B, M]
        dropped = keep & (torch.rand(keep.shape, device=keep.device) >= self.modality_dropout)
        emptied = keep.any(dim=1) & ~dropped.any(dim=1)
        # Restore one random present modality where all were dropped; branch-free, so no host sync.
        scores = torch.rand(keep.shape, device=keep.device).masked_fill(~keep, -1.0)
        restore = F.one_hot(scores.argmax(dim=1), len(mods)).bool() & emptied.unsqueeze(1)
        dropped = dropped | restore
        return {m: dropped[:, i] for i, m in enumerate(mods)}

    def forward(
        self,
        inputs: Optional[dict[str, dict[str, torch.Tensor]]] = None,
        present: Optional[dict[str, torch.Tensor]] = None,
        labels: Optional[torch.Tensor] = None,
        features: Optional[dict[str, EncoderOutput]] = None,
    ) -> ModelOutput:
        """Encode (skipping modalities given in `features`), fuse, apply the head and its loss."""
        feats = self._features(inputs or {}, features, required=self.modalities)
        present = self.fusion.presence(feats, present)
        if self.training and self.modality_dropout > 0:
            present = self._drop_modalities(present)
        fused = self.fusion(feats, present)
        logits = self.head(fused) if self.head is not None else None
        loss = None
        if labels is not None:
            if self.head is None:
                raise ValueError("labels were given but the model has no task head")
            loss = self.head.loss(logits, labels)
        return ModelOutput(loss=loss, logits=logits, fused=fused, features=feats)

    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable description that `from_pretrained` rebuilds with no network."""
        return {
            **super().get_config(),
            "fusion": self.fusion.get_config(),
            "head": self.head.get_config() if self.head is not None else None,
            "modality_dropout": self.modality_dropout,
        }

    @classmethod
    def _from_config(cls, config: dict[str, Any], encoders: dict[str, Encoder]) -> MultimodalModel:
        if not isinstance(config.get("fusion"), dict):
            raise ValueError("missing field 'fusion' (an object with name, input_dims, output_dim)")
        try:
            head = TaskHead.from_config(config["head"]) if config.get("head") else None
        except (TypeError, ValueError) as err:
            raise ValueError(f"field 'head': {err}") from err
        try:
            fusion = fusion_from_config(config["fusion"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"field 'fusion': {err}") from err
        return cls(encoders, fusion=fusion, head=head, modality_dropout=config.get("modality_dropout", 0.0))
