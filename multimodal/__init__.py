"""Multimodal fine-tuning: models, data, config, Accelerate training, tasks, evaluation.

The names most code needs are here: ``from multimodal import run, load_config, MultimodalModel, DualEncoder``.
"""

from multimodal.config import ConfigError, ExperimentConfig, load_config
from multimodal.data import DataError, MultimodalDataset, make_demo
from multimodal.data.batches import to_device
from multimodal.deploy import Predictor
from multimodal.models import (
    DualEncoder,
    ModelOutput,
    MultimodalModel,
    TaskHead,
    create_dual_encoder,
    create_model,
    list_presets,
    load_model,
)
from multimodal.registry import Registry, UnknownNameError, get_task, list_tasks, register_task
from multimodal.tasks import ClassificationTask, EvalResult, RetrievalTask, Task, run, summarize
from multimodal.training import Trainer, TrainerOptions, predict

__all__ = [
    "ClassificationTask",
    "ConfigError",
    "DataError",
    "DualEncoder",
    "EvalResult",
    "ExperimentConfig",
    "ModelOutput",
    "MultimodalDataset",
    "MultimodalModel",
    "Predictor",
    "Registry",
    "RetrievalTask",
    "Task",
    "TaskHead",
    "Trainer",
    "TrainerOptions",
    "UnknownNameError",
    "create_dual_encoder",
    "create_model",
    "get_task",
    "list_presets",
    "list_tasks",
    "load_config",
    "load_model",
    "make_demo",
    "predict",
    "register_task",
    "run",
    "summarize",
    "to_device",
]
