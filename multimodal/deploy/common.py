"""Deprecated: this module was split by concern (errors, the exported folder, output formatting); its names
keep working for one release with a DeprecationWarning."""

from multimodal.deprecation import relocated

__getattr__ = relocated(__name__, {
    "DeployError": "multimodal.deploy.errors",
    "BadInputError": "multimodal.deploy.errors",
    "DEPLOY_CONFIG": "multimodal.deploy.runtime.folder",
    "DEPLOY_FORMAT_VERSION": "multimodal.deploy.runtime.folder",
    "FORMATS": "multimodal.deploy.runtime.folder",
    "package_versions": "multimodal.deploy.runtime.folder",
    "staged_folder": "multimodal.deploy.runtime.folder",
    "CLASSIFIER_TASKS": "multimodal.deploy.runtime.outputs",
    "softmax": "multimodal.deploy.runtime.outputs",
    "sigmoid": "multimodal.deploy.runtime.outputs",
    "label_names": "multimodal.deploy.runtime.outputs",
    "format_logits": "multimodal.deploy.runtime.outputs",
})
