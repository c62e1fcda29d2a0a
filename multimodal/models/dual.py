"""`DualEncoder`: two (or more) towers projected into one embedding space, trained with symmetric InfoNCE.

open_clip's shape: ``encode(modality, inputs)`` embeds one modality alone (``encode_image`` / ``encode_text``),
so a gallery is embedded once and any pair of modalities can be compared (text-image, text-audio,
image-audio). `forward` embeds every modality in the batch and returns the contrastive loss over the
aligned pairs (`multimodal.models.contrastive.ContrastiveHead`), gathered across processes in training.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch

from encoders import Encoder
from encoders.base import EncoderOutput
from multimodal.models.base import EncoderModel, register_model_type
from multimodal.models.compat import positional_deprecated
from multimodal.models.contrastive import ContrastiveHead
from multimodal.models.output import ModelOutput


@register_model_type("dual_encoder")
class DualEncoder(EncoderModel):
    """Encoders by modality plus a `ContrastiveHead` (projections + temperature).

    Build it from encoders and an embedding width (``DualEncoder(encoders, embed_dim=256)``, extra keyword
    arguments go to `ContrastiveHead`), or pass a ready one (``DualEncoder(encoders, head=...)``).
    """

    @positional_deprecated("head", "embed_dim")
    def __init__(
        self, encoders: dict[str, Encoder], *, head: Optional[ContrastiveHead] = None, embed_dim: int = 256,
        **head_kwargs: Any,
    ) -> None:
        super().__init__(encoders)
        dims = {m: int(e.output_dim) for m, e in encoders.items()}
        if head is None:
            head = ContrastiveHead(dims, embed_dim, **head_kwargs)
        elif head_kwargs:
            raise ValueError(f"DualEncoder: pass either a head or head options, not both ({sorted(head_kwargs)})")
        if head.input_dims != dict(sorted(dims.items())):
            raise ValueError(f"the contrastive head expects {head.input_dims}, the encoders output {dims}")
        self.head = head

    @property
    def embed_dim(self) -> int:
        """Width of the shared embedding space."""
        return self.head.embed_dim

    @property
    def logit_scale(self) -> torch.Tensor:
        """The learnable temperature (log space), clamped as the loss uses it."""
        return self.head.clamped_logit_scale()

    def encode(
        self,
        modality: str,
        inputs: Optional[dict[str, torch.Tensor]] = None,
        normalize: bool = True,
        features: Optional[Union[EncoderOutput, torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Embeddings `[B, embed_dim]` of one modality from its preprocessed `inputs` (or its encoder `features`)."""
        if modality not in self.encoders:
            raise KeyError(f"the model has no {modality!r} tower; towers are {self.modalities}")
        if features is None:
            if inputs is None:
                raise ValueError(f"encode({modality!r}) needs inputs (from the encoder's preprocess) or features")
            features = self._run_encoder(modality, inputs)
        pooled = features.pooled if isinstance(features, EncoderOutput) else features
        return self.head.embed(modality, pooled, normalize=normalize)

    def forward(
        self,
        inputs: Optional[dict[str, dict[str, torch.Tensor]]] = None,
        present: Optional[dict[str, torch.Tensor]] = None,
        labels: Optional[torch.Tensor] = None,
        features: Optional[dict[str, EncoderOutput]] = None,
        *,
        compute_loss: bool = True,
    ) -> ModelOutput:
        """Embed every modality in the batch; with two or more, the InfoNCE loss over the aligned pairs. The
        output's `logit_scale` is the exponentiated temperature (what `ClipLoss` takes, as in open_clip).
        `compute_loss=False` embeds only (no loss, no collective): gradient caching embeds a batch chunk by chunk."""
        feats = self._features(inputs or {}, features)
        if not feats:
            raise KeyError(f"no inputs or features for any tower of {self.modalities}")
        self.check_present(present)
        embeddings = {m: self.head.embed(m, f.pooled) for m, f in feats.items()}
        pairs_here = any(a in embeddings and b in embeddings for a, b in self.head.pairs)
        loss = self.head.loss(embeddings, present) if pairs_here and compute_loss else None
        return ModelOutput(loss=loss, embeddings=embeddings, features=feats, logit_scale=self.logit_scale.exp())

    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable description that `from_pretrained` rebuilds with no network."""
        return {**super().get_config(), "head": self.head.get_config()}

    @classmethod
    def _from_config(cls, config: dict[str, Any], encoders: dict[str, Encoder]) -> DualEncoder:
        if isinstance(config.get("head"), dict):
            try:
                head = ContrastiveHead.from_config(config["head"])
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"field 'head': {err}") from err
            return cls(encoders, head=head)
        legacy = config.get("fusion")  # written by MultimodalModel + ContrastiveFusion (before DualEncoder)
        if isinstance(legacy, dict) and legacy.get("name") == "contrastive":
            kwargs = {k: v for k, v in (legacy.get("kwargs") or {}).items() if k != "pairs"}
            return cls(encoders, head=ContrastiveHead(legacy["input_dims"], legacy["output_dim"], **kwargs))
        raise ValueError("a dual_encoder needs a 'head' object (the contrastive head's config)")

    def legacy_state_names(self, state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Tensor names of folders saved before DualEncoder existed (``fusion.*`` -> ``head.*``)."""
        if config.get("model_type") == self.model_type:
            return state
        return {("head." + k[len("fusion."):] if k.startswith("fusion.") else k): v for k, v in state.items()}
