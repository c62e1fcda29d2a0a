"""The exported-model runtime: an exported folder (``deploy.json`` + ONNX graphs + preprocessing files) run
with numpy, Pillow, `tokenizers`, soundfile and ONNX Runtime only. Importing it does not import torch,
accelerate or transformers' models (tests/multimodal/deploy/test_runtime_imports.py checks ``sys.modules``).

    from multimodal.deploy.runtime import ExportedModel, format_logits
    model = ExportedModel("exported/")
    inputs = {m: model.preprocess(m, [sample]) for m in model.modalities}   # PIL image, (wave, sr), str
    present = {m: [True] for m in model.modalities}
    print(format_logits(model.logits(inputs, present), model.task, model.labels))
"""

from multimodal.deploy.errors import BadInputError, DeployError
from multimodal.deploy.runtime.folder import (
    DEPLOY_CONFIG,
    DEPLOY_FORMAT_VERSION,
    FORMATS,
    is_exported,
    package_versions,
    read_deploy_config,
    staged_folder,
)
from multimodal.deploy.runtime.model import ExportedModel, onnx_session
from multimodal.deploy.runtime.outputs import CLASSIFIER_TASKS, format_logits, label_names, sigmoid, softmax
from multimodal.deploy.runtime.preprocess import NumpyImagePreprocessor, build_preprocessor, resample

__all__ = [
    "CLASSIFIER_TASKS",
    "DEPLOY_CONFIG",
    "DEPLOY_FORMAT_VERSION",
    "FORMATS",
    "BadInputError",
    "DeployError",
    "ExportedModel",
    "NumpyImagePreprocessor",
    "build_preprocessor",
    "format_logits",
    "is_exported",
    "label_names",
    "onnx_session",
    "package_versions",
    "read_deploy_config",
    "resample",
    "sigmoid",
    "softmax",
    "staged_folder",
]
