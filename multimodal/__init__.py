"""Model assembly, data, training on Accelerate, evaluation and config."""

from .heads import TaskHead
from .model import ModelOutput, MultimodalModel

__all__ = ["ModelOutput", "MultimodalModel", "TaskHead"]
