"""Checkpoint folders under ``<output_dir>/checkpoints/``: `accelerator.save_state` plus ``trainer_state.json``.

A checkpoint counts as complete once its ``trainer_state.json`` exists: it is written (atomically) after
accelerate has saved the model, optimizer, scheduler and RNG states.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Optional

from multimodal.utils import write_json

STATE_FILE = "trainer_state.json"


def save_checkpoint(accelerator: Any, path: str, state: dict[str, Any], keep: Optional[int] = None) -> str:
    """Save accelerate's state and `state` into `path`; with `keep`, prune all but the newest `keep` siblings."""
    accelerator.wait_for_everyone()
    accelerator.save_state(path)
    if accelerator.is_main_process:
        write_json(os.path.join(path, STATE_FILE), state, indent=1)
        if keep:
            prune_checkpoints(os.path.dirname(path), keep, protect=path)
    accelerator.wait_for_everyone()
    return path


def checkpoints(root: str) -> list[str]:
    """Complete checkpoint folders under `root`, oldest first."""
    if not os.path.isdir(root):
        return []
    found = [os.path.join(root, d) for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, STATE_FILE))]
    return sorted(found, key=os.path.getmtime)


def prune_checkpoints(root: str, keep: int, protect: Optional[str] = None) -> None:
    """Delete all but the newest `keep` checkpoint folders (never `protect`)."""
    entries = [os.path.join(root, d) for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))]
    entries.sort(key=os.path.getmtime)
    for old in entries[:-keep]:
        if protect is None or os.path.abspath(old) != os.path.abspath(protect):
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(root: str) -> Optional[str]:
    """The newest complete checkpoint under `root`, if any."""
    found = checkpoints(root)
    return found[-1] if found else None


def read_state(path: str) -> dict[str, Any]:
    """The ``trainer_state.json`` of a checkpoint folder."""
    state_file = os.path.join(path, STATE_FILE)
    if not os.path.exists(state_file):
        raise FileNotFoundError(f"{path!r} is not a checkpoint directory (no {STATE_FILE})")
    with open(state_file, encoding="utf-8") as f:
        return json.load(f)
