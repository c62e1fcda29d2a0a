"""Checkpoint folders under ``<output_dir>/checkpoints/``: `accelerator.save_state`, extra files, then ``trainer_state.json``.

A checkpoint is complete once its ``trainer_state.json`` exists. That file is written last and atomically,
and it lists every other file of the folder with its size and SHA-256 (`multimodal.training.integrity`). A
folder saved again is emptied first, marker first, so a kill while saving never leaves an old marker over new
files. `resolve_latest` walks the checkpoint folders newest first and returns the first that passes
`verify_checkpoint`, with the ones it skipped and why. Pruning keeps the newest complete folders and removes
the torn ones that kills left behind.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any, Optional

from multimodal.files import write_json
from multimodal.training.integrity import CheckpointError, check_manifest, check_pickles, file_manifest

STATE_FILE = "trainer_state.json"
FORMAT = 1  # of trainer_state.json: 1 adds "format" and "files" (the manifest)


def _clear(path: str) -> None:
    """Remove a checkpoint folder, its completion marker first (a kill half-way leaves an incomplete folder)."""
    marker = os.path.join(path, STATE_FILE)
    if os.path.isfile(marker):
        os.remove(marker)
    shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(accelerator: Any, path: str, state: dict[str, Any], keep: Optional[int] = None,
                    writers: Sequence[Callable[[str], None]] = ()) -> str:
    """Save accelerate's state, then each of `writers` (main process, given `path`), then `state` with the file
    manifest; with `keep`, prune all but the newest `keep` complete siblings."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and os.path.exists(path):
        _clear(path)  # e.g. after falling back past a damaged checkpoint of the same name
    accelerator.wait_for_everyone()
    accelerator.save_state(path)
    if accelerator.is_main_process:
        for write in writers:
            write(path)
    accelerator.wait_for_everyone()  # every process's RNG state is on disk
    if accelerator.is_main_process:
        manifest = file_manifest(path, skip=[STATE_FILE])
        write_json(os.path.join(path, STATE_FILE), {**state, "format": FORMAT, "files": manifest}, indent=1)
        prune_checkpoints(os.path.dirname(path), keep, protect=path)
    accelerator.wait_for_everyone()
    return path


def folder_mib(path: str) -> float:
    """Size of the files under `path`, in MiB (what a checkpoint costs on disk)."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files) / 2**20


def _folders(root: str) -> list[str]:
    """Checkpoint folders under `root` (complete or not), oldest first by modification time."""
    if not os.path.isdir(root):
        return []
    found = [os.path.join(root, d) for d in os.listdir(root)
             if not d.startswith(".") and os.path.isdir(os.path.join(root, d))]
    return sorted(found, key=lambda p: (os.path.getmtime(p), os.path.basename(p)))


def checkpoints(root: str) -> list[str]:
    """Complete checkpoint folders under `root` (their marker exists), oldest first."""
    return [p for p in _folders(root) if os.path.isfile(os.path.join(p, STATE_FILE))]


def _readable(path: str) -> bool:
    try:
        _load_state(path)
        return True
    except CheckpointError:
        return False


def prune_checkpoints(root: str, keep: Optional[int], protect: Optional[str] = None) -> list[str]:
    """Delete torn folders (no marker, or a marker that does not parse) and, with `keep`, all but the newest
    `keep` complete ones; never `protect`. Returns what was deleted."""
    protect = os.path.abspath(protect) if protect else None
    complete, torn = [], []
    for path in _folders(root):
        (complete if _readable(path) else torn).append(path)
    doomed = torn + (complete[:-keep] if keep else [])
    removed = []
    for path in doomed:
        if os.path.abspath(path) != protect:
            _clear(path)
            removed.append(path)
    return removed


def _load_state(path: str) -> dict[str, Any]:
    """The parsed ``trainer_state.json`` of `path`, checked for shape; `CheckpointError` naming the file."""
    state_file = os.path.join(path, STATE_FILE)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path!r} is not a checkpoint folder (it does not exist or is a file)")
    if not os.path.isfile(state_file):
        raise CheckpointError(f"{path}: not a complete checkpoint (no {STATE_FILE}: a save cut short leaves none)")
    try:
        with open(state_file, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{state_file}: not readable JSON ({type(err).__name__}: {err}); the file is damaged") from None
    trainer = saved.get("trainer") if isinstance(saved, dict) else None
    if not isinstance(trainer, dict):
        raise CheckpointError(f"{state_file}: no 'trainer' state object; not a checkpoint of this framework")
    for key in ("epoch", "batch_in_epoch", "global_step"):
        value = trainer.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CheckpointError(f"{state_file}: trainer.{key} is {value!r}, not a count")
    return saved


def verify_checkpoint(path: str) -> dict[str, Any]:
    """The saved state of a checkpoint folder that is complete, untouched and holds only data pickles.

    Raises `CheckpointError` naming the file: no marker, a marker that does not parse, a listed file missing,
    truncated or changed, a pickle referring to code. Folders written before manifests existed (no "files")
    are accepted on their marker alone."""
    saved = _load_state(path)
    if "files" in saved:
        check_manifest(path, saved["files"], STATE_FILE)
    check_pickles(path)
    return saved


def read_state(path: str) -> dict[str, Any]:
    """The ``trainer_state.json`` of a checkpoint folder, after `verify_checkpoint`."""
    return verify_checkpoint(path)


def resolve_latest(root: str) -> tuple[Optional[str], Optional[dict[str, Any]], list[str]]:
    """(newest usable checkpoint under `root`, its state, one line per newer folder skipped and why)."""
    skipped = []
    for path in reversed(_folders(root)):
        try:
            return path, verify_checkpoint(path), skipped
        except CheckpointError as err:
            skipped.append(str(err))
    return None, None, skipped


def latest_checkpoint(root: str) -> Optional[str]:
    """The newest checkpoint under `root` that passes `verify_checkpoint`, if any."""
    return resolve_latest(root)[0]


def resume_target(resume_from: str, root: str, report: Callable[[str], None] = print,
                  processes: int = 1) -> tuple[str, dict[str, Any]]:
    """(folder, saved state) of the checkpoint `resume_from` names: a folder, or "latest" for the newest usable
    one under `root`; each newer folder skipped is reported through `report` with the reason, and so is a
    checkpoint written by another number of processes than `processes` (accelerate then skips RNG states)."""
    if resume_from != "latest":
        path, saved = resume_from, verify_checkpoint(resume_from)
    else:
        path, saved, skipped = resolve_latest(root)
        for note in skipped:
            report(f"resume_from=latest: skipped {note}")
        if path is None:
            raise CheckpointError(f"resume_from=latest: no complete, intact checkpoint under {root}"
                                  + (f" ({len(skipped)} skipped)" if skipped else ""))
    writers = len([f for f in os.listdir(path) if f.startswith("random_states_") and f.endswith(".pkl")])
    if writers and writers != processes:
        report(f"warning: {path} was written by {writers} process(es) and is resumed by {processes}: the random "
               "states do not carry over, so the run will not match an uninterrupted one bit for bit")
    return path, saved
