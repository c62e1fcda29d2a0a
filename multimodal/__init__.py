"""Multimodal fine-tuning: models, data, config, Accelerate training, tasks, evaluation.

The names most code needs are here: ``from multimodal import run, load_config, MultimodalModel, DualEncoder``.
They load on first use (PEP 562), so importing a light submodule, such as the exported-model runtime
``multimodal.deploy.runtime`` (numpy, Pillow, ONNX Runtime), does not import torch or accelerate.
"""

from encoders._lazy import lazy_exports

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
    "Registry": "multimodal.registry",
    "RetrievalTask": "multimodal.tasks",
    "Task": "multimodal.tasks",
    "TaskHead": "multimodal.models",
    "Trainer": "multimodal.training",
    "TrainerOptions": "multimodal.training",
    "UnknownNameError": "multimodal.registry",
    "create_dual_encoder": "multimodal.models",
    "create_model": "multimodal.models",
    "get_task": "multimodal.registry",
    "list_presets": "multimodal.models",
    "list_tasks": "multimodal.registry",
    "load_config": "multimodal.config",
    "load_model": "multimodal.models",
    "make_demo": "multimodal.data",
    "predict": "multimodal.training",
    "register_task": "multimodal.registry",
    "run": "multimodal.tasks",
    "summarize": "multimodal.tasks",
    "to_device": "multimodal.data.batches",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
