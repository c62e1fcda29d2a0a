"""Training on Hugging Face Accelerate: the loop, its checkpoints and the shared prediction loop."""

import warnings
from typing import Any

from multimodal.training.integrity import NonFiniteLossError
from multimodal.training.predict import forward_batch, predict
from multimodal.training.schedule import lr_multiplier
from multimodal.training.trainer import Trainer, TrainerOptions
from multimodal.training.trainer_state import TrainerState

__all__ = ["NonFiniteLossError", "Trainer", "TrainerOptions", "TrainerState", "forward_batch", "predict"]


def __getattr__(name: str) -> Any:
    if name == "lr_lambda":  # the hand-written schedule gave way to transformers' get_scheduler
        warnings.warn("multimodal.training.lr_lambda is deprecated and goes away in the next release: use "
                      "multimodal.training.schedule.lr_multiplier (the warmup ramp is now step / warmup)",
                      DeprecationWarning, stacklevel=2)
        return lr_multiplier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
