"""Multimodal fine-tuning: models, data, config, Accelerate training, tasks, evaluation.

The names most code needs are here: ``from multimodal import run, load_config, MultimodalModel, DualEncoder``.
They load on first use (PEP 562), so importing a light submodule, such as the exported-model runtime
``multimodal.deploy.runtime`` (numpy, Pillow, ONNX Runtime), does not import torch or accelerate.
"""

from importlib import import_module
from importlib.util import find_spec
from typing import Any

_EXPORTS = {
    "ClassificationTask": "multimodal.tasks",
    "ConfigError": "multimodal.config",
    "DataError": "multimodal.data",
    "DualEncoder": "multimodal.models",
    "EvalResult": "multimodal.tasks",
    "ExperimentConfig": "multimodal.config",
    "ModelOutput": "multimodal.models",
    "MultimodalDataset": "multimodal.data",
    "MultimodalModel": "multimodal.models",
    "Predictor": "multimodal.deploy",
    "RetrievalTask": "multimodal.tasks",
    "Task": "multimodal.tasks",
    "TaskHead": "multimodal.models",
    "Trainer": "multimodal.training",
    "get_task": "multimodal.registry",
    "list_tasks": "multimodal.registry",
    "load_config": "multimodal.config",
    "load_model": "multimodal.models",
    "make_demo": "multimodal.data",
    "predict": "multimodal.training",
    "register_task": "multimodal.registry",
    "run": "multimodal.tasks",
    "summarize": "multimodal.tasks",
    "to_device": "multimodal.utils",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Load a public name (or a submodule, ``multimodal.tasks``) on first use."""
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
    elif not name.startswith("_") and find_spec(f"multimodal.{name}") is not None:
        value = import_module(f"multimodal.{name}")
    else:
        raise AttributeError(f"module 'multimodal' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
