"""`ModelOutput`: what every model's `forward` returns, readable by attribute or by key."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

import torch

from encoders.base import EncoderOutput


@dataclass
class ModelOutput:
    """What the models' `forward` returns (fields a model does not produce stay None).

    Attributes (``out.logits``) or keys (``out["logits"]``, ``"loss" in out``, ``out.keys()``): as a mapping it
    holds the fields the model produced; a key it did not produce raises KeyError naming those it did.
    `logit_scale` (two-tower models) is the exponentiated temperature, what `ClipLoss` takes.
    """

    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    fused: Optional[torch.Tensor] = None
    embeddings: Optional[dict[str, torch.Tensor]] = None
    features: Optional[dict[str, EncoderOutput]] = None
    logit_scale: Optional[torch.Tensor] = None

    def keys(self) -> list[str]:
        """The fields this output holds (those that are not None), in field order."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            what = "not a field" if key not in {f.name for f in fields(self)} else "not produced by this model"
            raise KeyError(f"ModelOutput has no {key!r} ({what}); it holds {self.keys()}")
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def get(self, key: str, default: Any = None) -> Any:
        """The field `key` if this output holds it, else `default`."""
        return getattr(self, key) if key in self.keys() else default
