"""Opening a PyTorch model folder (``save_pretrained``) for deployment, safely: no code from the folder runs unless
the caller passes ``trust_remote_code=True``. Exported folders are read by `multimodal.deploy.runtime`."""

from __future__ import annotations

import os
from typing import Optional

from multimodal.deploy.errors import DeployError
from multimodal.deploy.runtime.folder import DEPLOY_CONFIG
from multimodal.deprecation import relocated
from multimodal.evaluation.cli import saved_labels
from multimodal.models.base import CONFIG_NAME, EncoderModel, load_model, read_model_config


def load_source_model(directory: str, trust_remote_code: bool = False) -> tuple[EncoderModel, Optional[list[str]], dict]:
    """(model in eval mode, training label order or None, config.json) of a PyTorch model folder.

    An encoder saved with ``trust_remote_code`` would run code from the folder when rebuilt: that needs the
    caller's ``trust_remote_code=True``.
    """
    if not os.path.isdir(directory):
        raise DeployError(f"model folder {directory!r} does not exist")
    if not os.path.isfile(os.path.join(directory, CONFIG_NAME)):
        raise DeployError(f"{directory!r} is neither a saved model (no {CONFIG_NAME}) nor an exported folder (no "
                          f"{DEPLOY_CONFIG}); point at the 'model' folder a recipe writes")
    try:
        config = read_model_config(directory)
    except (FileNotFoundError, ValueError) as err:
        raise DeployError(str(err)) from None
    remote = sorted(m for m, c in config["encoders"].items() if isinstance(c, dict) and c.get("trust_remote_code"))
    if remote and not trust_remote_code:
        raise DeployError(f"{directory}: the {remote} encoder(s) were saved with trust_remote_code, so loading them runs "
                          "code from the model folder; pass trust_remote_code=True (--trust-remote-code) if you trust it")
    model = load_model(directory)
    try:
        labels = saved_labels(directory)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DeployError(f"{directory}: labels.json cannot be read ({err})") from None
    return model, labels, config


# Moved to the torch-free runtime (`multimodal.deploy.runtime.folder`); the old names warn for one release.
__getattr__ = relocated(__name__, {"is_exported": "multimodal.deploy.runtime.folder",
                               "read_deploy_config": "multimodal.deploy.runtime.folder"})
