"""Checks of a saved model folder that run before (and just after) its weights are loaded, so that a damaged or
hostile folder fails with a `ModelFolderError` naming the file and the tensor or field, never a traceback, a
wrong file blamed, gigabytes allocated for a width the weights do not have, or a model that predicts NaN:

* every JSON file of the folder parses (``labels.json``, the encoders' assets such as ``tokenizer.json``,
  which must also load as a `tokenizers.Tokenizer`);
* the ``model.safetensors`` header (read without loading a tensor) lists only known dtypes;
* the model is first built on the meta device (no memory; `multimodal.models.base`) and its tensor shapes
  compared with the header's, so a config whose widths do not match the weights is refused before anything is
  allocated;
* every loaded floating-point tensor is finite.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from tokenizers import Tokenizer

# dtypes model.safetensors may hold (safetensors' names): floating weights, integer/bool buffers.
ALLOWED_DTYPES = {"F16", "BF16", "F32", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"}


class FolderFileError(ValueError):
    """One file of a model folder does not parse; `load_model` reports it as a `ModelFolderError`."""


def read_json_file(path: Path) -> Any:
    """The JSON value of `path`, or `FolderFileError` naming it (unreadable, invalid, or nested deeper than the
    parser's recursion limit)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise FolderFileError(f"{path}: invalid JSON, cannot be read as UTF-8 text ({type(err).__name__}: {err})") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise FolderFileError(f"{path}: JSON nested too deeply to read") from None
    except ValueError as err:
        raise FolderFileError(f"{path}: invalid JSON ({type(err).__name__}: {err})") from None


def check_asset_files(directory: Path) -> None:
    """Every JSON file under ``encoders/`` and ``labels.json`` parses; a ``tokenizer.json`` also loads."""
    paths = sorted((directory / "encoders").rglob("*.json")) if (directory / "encoders").is_dir() else []
    if (directory / "labels.json").is_file():
        paths.append(directory / "labels.json")
    for path in paths:
        read_json_file(path)
        if path.name == "tokenizer.json":
            try:
                Tokenizer.from_file(str(path))
            except Exception as err:  # noqa: BLE001 - tokenizers raises a bare Exception for a damaged file
                raise FolderFileError(f"{path}: not a tokenizer file ({err})") from None


def weights_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """tensor name -> (dtype, shape) from the safetensors header alone; a dtype outside `ALLOWED_DTYPES` is refused."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = {}
            for name in f.keys():
                piece = f.get_slice(name)
                header[name] = (piece.get_dtype(), tuple(piece.get_shape()))
    except (SafetensorError, OSError) as err:  # a torn, truncated or foreign file
        raise FolderFileError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from None
    for name, (dtype, _) in header.items():
        if dtype not in ALLOWED_DTYPES:
            raise FolderFileError(f"{path}: tensor {name!r} has dtype {dtype}; a model folder holds "
                                  f"{', '.join(sorted(ALLOWED_DTYPES))}")
    return header


def check_shapes(expected: dict[str, tuple[int, ...]], header: dict[str, tuple[str, tuple[int, ...]]], path: Path,
                 config_path: Path) -> None:
    """Refuse a tensor whose shape in the weights' header differs from the `expected` shape of the architecture the
    config describes (computed on the meta device, before anything is allocated)."""
    for name, shape in expected.items():
        stored = header.get(name)
        if stored is not None and stored[1] != shape:
            raise FolderFileError(f"{path}: tensor {name!r} has shape {list(stored[1])}, which does not match the "
                                  f"architecture in {config_path} ({list(shape)}); refused before building it")


def check_tensors(state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse a loaded floating-point tensor holding NaN or inf, naming it."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise FolderFileError(f"{path}: tensor {name!r} holds NaN or inf values")
