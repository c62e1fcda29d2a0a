"""Training on Hugging Face Accelerate: the loop, its checkpoints and the shared prediction loop."""

from multimodal.training.predict import forward_batch, predict
from multimodal.training.state import NonFiniteLossError, TrainerState, lr_lambda
from multimodal.training.trainer import Trainer

__all__ = ["NonFiniteLossError", "Trainer", "TrainerState", "forward_batch", "lr_lambda", "predict"]
