"""What makes a checkpoint folder safe to resume from: a manifest of its files, pickles that hold only data,
and finite weights.

* `file_manifest` records every file of a checkpoint (size and SHA-256) into its ``trainer_state.json``;
  `check_manifest` refuses a folder whose files are missing, truncated or changed since.
* accelerate unpickles the state of objects registered for checkpointing (here the LR scheduler) with
  ``weights_only=False``, so a tampered ``custom_checkpoint_0.pkl`` could run code on resume. `check_pickles`
  reads the global names every pickle in the folder refers to, without unpickling anything, and refuses any
  beyond the plain containers, tensors and numpy arrays that torch's ``weights_only`` loader allows (with
  accelerate's numpy additions for the RNG states).
* `check_finite` runs before every save: a NaN or infinite weight, buffer or optimizer moment stops training
  with `NonFiniteWeightsError` instead of being written.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from typing import Any, Optional

import torch
from torch import nn

PICKLE_SUFFIXES = (".bin", ".pkl", ".pt", ".pth")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class CheckpointError(ValueError):
    """A checkpoint folder cannot be resumed from; the message names the folder, the file and the reason."""


class NonFiniteWeightsError(FloatingPointError):
    """Weights, buffers or optimizer state became NaN or infinite; the checkpoint was not written."""


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(directory: str, skip: Iterable[str] = ()) -> list[str]:
    """Relative paths of the regular files under `directory` (sorted), except the names in `skip`."""
    skip = set(skip)
    found = []
    for base, dirs, names in os.walk(directory):
        dirs.sort()
        for name in names:
            rel = os.path.relpath(os.path.join(base, name), directory)
            if rel not in skip:
                found.append(rel)
    return sorted(found)


def file_manifest(directory: str, skip: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """``{relative path: {"bytes": size, "sha256": hex}}`` of every file under `directory` but `skip`."""
    out = {}
    for rel in _files(directory, skip):
        path = os.path.join(directory, rel)
        out[rel] = {"bytes": os.path.getsize(path), "sha256": _sha256(path)}
    return out


def check_manifest(directory: str, manifest: Any, state_file: str) -> None:
    """Raise `CheckpointError` unless every file `manifest` lists is present with its size and SHA-256."""
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{os.path.join(directory, state_file)}: 'files' is not a mapping of file names")
    for rel, entry in sorted(manifest.items()):
        path = os.path.join(directory, rel)
        if not isinstance(entry, dict) or not isinstance(entry.get("bytes"), int) or not isinstance(entry.get("sha256"), str):
            raise CheckpointError(f"{os.path.join(directory, state_file)}: the entry of {rel!r} is not {{bytes, sha256}}")
        if os.path.isabs(rel) or rel.split(os.sep)[0] == ".." or not os.path.isfile(path):
            raise CheckpointError(f"{path}: missing (listed in {state_file})")
        size = os.path.getsize(path)
        if size != entry["bytes"]:
            raise CheckpointError(f"{path}: {size} bytes, but {entry['bytes']} were written (truncated or replaced)")
        if _sha256(path) != entry["sha256"]:
            raise CheckpointError(f"{path}: contents changed since it was written (SHA-256 differs)")


def _allowed_globals() -> list[Any]:
    """What accelerate itself allows when it loads with ``weights_only=True`` (numpy arrays of the RNG states)."""
    try:
        from accelerate.utils.other import TORCH_SAFE_GLOBALS
    except ImportError:  # pragma: no cover - older accelerate: torch's own list only
        return []
    return list(TORCH_SAFE_GLOBALS)


def check_pickles(directory: str) -> None:
    """Raise `CheckpointError` for a pickle in `directory` that refers to anything but plain data.

    Nothing is unpickled: torch lists the globals a ``torch.save`` file refers to, and any that its
    ``weights_only`` loader (plus accelerate's numpy additions) would not accept is refused by name.
    """
    for rel in _files(directory):
        if not rel.endswith(PICKLE_SUFFIXES):
            continue
        path = os.path.join(directory, rel)
        try:
            with torch.serialization.safe_globals(_allowed_globals()):
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception as err:  # noqa: BLE001 - any failure to read the pickle's index refuses it
            raise CheckpointError(f"{path}: not a file written by torch.save ({type(err).__name__}: {err})") from None
        if unsafe:
            raise CheckpointError(
                f"{path}: refers to {', '.join(sorted(unsafe))}, which a checkpoint of this framework never holds; "
                "refusing to unpickle it (a tampered or foreign checkpoint could run code on resume)"
            )


def training_tensors(model: nn.Module, optimizer: Any = None, ema: Optional[nn.Module] = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of everything a checkpoint stores as numbers: weights, buffers, EMA, optimizer state."""
    yield from model.state_dict().items()
    if ema is not None:
        yield from ((f"ema.{k}", v) for k, v in ema.state_dict().items())
    if optimizer is not None:
        names = {id(p): n for n, p in model.named_parameters()}
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one
        for param, slots in inner.state.items():
            for slot, value in slots.items():
                if isinstance(value, torch.Tensor):
                    yield f"optimizer.{names.get(id(param), '?')}.{slot}", value


def first_nonfinite(tensors: Iterable[tuple[str, torch.Tensor]]) -> Optional[str]:
    """The name of the first floating-point tensor holding NaN or inf, or None."""
    named = [(n, t) for n, t in tensors if t.is_floating_point() and t.numel()]
    if not named:
        return None
    bad = torch.stack([~torch.isfinite(t.detach()).all() for _, t in named]).cpu()  # one sync for all of them
    hits = torch.nonzero(bad).flatten()
    return named[int(hits[0])][0] if hits.numel() else None


def check_finite(accelerator: Any, tensors: Iterable[tuple[str, torch.Tensor]], what: str) -> None:
    """Raise `NonFiniteWeightsError` on every process if any process holds a NaN/inf tensor (`what`: the save)."""
    name = first_nonfinite(tensors)
    flag = torch.tensor([0 if name is None else 1], device=accelerator.device)
    if accelerator.num_processes > 1:
        flag = accelerator.gather(flag)
    if int(flag.max()):
        where = f"{name!r}" if name is not None else "a tensor on another process"
        raise NonFiniteWeightsError(
            f"{where} holds NaN/inf, so {what} was not written; the checkpoints before it are finite. Lower the "
            "learning rate, enable gradient clipping (train.max_grad_norm) or use mixed_precision=no/bf16"
        )


def check_finite_loss(accelerator: Any, first_bad: torch.Tensor, epoch: int) -> None:
    """Raise `NonFiniteLossError` on every process when any process recorded a non-finite training loss
    (`first_bad`: the 0-based optimizer step of the first one, or -1)."""
    bad = accelerator.gather(first_bad.reshape(1))
    bad = bad[bad >= 0]
    if bad.numel():
        step = int(bad.min()) + 1  # 1-based, as in the training log
        raise NonFiniteLossError(
            f"training loss became NaN/inf at optimizer step {step} (epoch {epoch}); "
            "lower the learning rate, enable gradient clipping or use mixed_precision=no/bf16"
        )
