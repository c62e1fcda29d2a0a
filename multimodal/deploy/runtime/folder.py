"""The exported folder: its file names, reading its checked ``deploy.json``, and writing a new folder so that a
failed or killed export never leaves half of one."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any, Optional

from multimodal.deploy.errors import DeployError

DEPLOY_CONFIG = "deploy.json"  # the manifest of an exported folder (graphs, inputs, preprocessing, labels)
DEPLOY_FORMAT_VERSION = 1
FORMATS = ("onnx", "torch-export")
REQUIRED_FIELDS = ("format", "model_type", "task", "graphs", "preprocessing", "modalities")


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
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as err:
        raise DeployError(f"{path}: not valid JSON ({type(err).__name__}: {err})") from None
    if not isinstance(config, dict) or config.get("format_version") != DEPLOY_FORMAT_VERSION:
        raise DeployError(f"{path}: format_version {config.get('format_version') if isinstance(config, dict) else None!r}"
                          f" is not supported (this code reads {DEPLOY_FORMAT_VERSION})")
    for key in REQUIRED_FIELDS:
        if key not in config:
            raise DeployError(f"{path}: missing field {key!r}")
    return config


def package_versions() -> dict[str, Optional[str]]:
    """Installed versions of this package and the runtimes a prediction may go through."""
    out: dict[str, Optional[str]] = {}
    for name in ("multimodal-finetune", "torch", "onnxruntime", "onnx", "transformers", "timm", "tokenizers", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


@contextlib.contextmanager
def staged_folder(output: str, prefix: str) -> Iterator[str]:
    """A temporary folder beside `output` to write an exported folder into; on success it replaces `output`
    (which must be absent or an exported folder), so a failed or killed export never leaves half a folder."""
    if os.path.exists(output) and not is_exported(output):
        raise DeployError(f"{output} exists and is not an exported folder; choose a new --output")
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        yield tmp
        if os.path.exists(output):
            shutil.rmtree(output)
        os.replace(tmp, output)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
