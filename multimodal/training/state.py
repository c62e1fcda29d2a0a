"""Deprecated: split by concern into `multimodal.training.accelerator` (the Accelerator and tracker set-up),
`multimodal.training.schedule` (the LR schedule), `multimodal.training.trainer_state` (`TrainerState`) and
`multimodal.training.integrity` (`NonFiniteLossError`)."""

from multimodal.deprecation import moved
from multimodal.training import accelerator, integrity, schedule, trainer_state

__getattr__ = moved(__name__, accelerator, {
    "TrainerState": (trainer_state.TrainerState, "multimodal.training.trainer_state.TrainerState"),
    "NonFiniteLossError": (integrity.NonFiniteLossError, "multimodal.training.integrity.NonFiniteLossError"),
    "lr_lambda": (schedule.lr_multiplier, "multimodal.training.schedule.lr_multiplier (transformers' schedules; "
                  "the warmup ramp is now step / warmup)"),
})
