"""Opening model folders for deployment: a PyTorch folder (``save_pretrained``) or an exported one (``deploy.json``),
safely: no code from the folder runs unless the caller passes ``trust_remote_code=True``."""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from multimodal.deploy.common import DEPLOY_CONFIG, DEPLOY_FORMAT_VERSION, DeployError
from multimodal.evaluation.cli import saved_labels
from multimodal.models.base import CONFIG_NAME, EncoderModel, load_model, read_model_config


def is_exported(directory: str) -> bool:
    """Whether `directory` is an exported folder (has ``deploy.json``)."""
    return os.path.isfile(os.path.join(directory, DEPLOY_CONFIG))


def read_deploy_config(directory: str) -> dict[str, Any]:
    """The checked ``deploy.json`` of an exported folder."""
    path = os.path.join(directory, DEPLOY_CONFIG)
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise DeployError(f"{path} not found: not an exported folder (see multimodal-export)") from None
    except json.JSONDecodeError as err:
        raise DeployError(f"{path}: invalid JSON ({err})") from None
    if not isinstance(config, dict) or config.get("format_version") != DEPLOY_FORMAT_VERSION:
        raise DeployError(f"{path}: format_version {config.get('format_version') if isinstance(config, dict) else None!r}"
                          f" is not supported (this code reads {DEPLOY_FORMAT_VERSION})")
    for key in ("format", "model_type", "task", "graphs", "preprocessing", "modalities"):
        if key not in config:
            raise DeployError(f"{path}: missing field {key!r}")
    return config


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
