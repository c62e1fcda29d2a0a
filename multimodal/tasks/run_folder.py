"""The run folder (``train.output_dir``): what the runner checks, clears and requires in it, so that two runs'
results never mix.

`open_run_folder` runs at the start of `multimodal.run`, before any data is read. A folder that holds an
earlier run (``metrics.json``, ``model/`` or ``checkpoints/``) is refused with a `ConfigError` saying how to
go on: resume it (``train.resume_from``), replace it (``train.overwrite_output_dir=true``, which first
deletes what the earlier run wrote there and nothing else) or pick another ``train.output_dir``. A resume
needs a checkpoint to resume from.

`hold_output_dir` keeps an exclusive lock on the folder for the whole run (the main process takes it, before
those checks), so two runs into one folder never both write: the second is refused with the holder's PID, host
and start time. The lock is an OS file lock (`filelock`), released by the kernel when its process dies, so the
lock of a killed run is taken over (and said so). A folder the run cannot write (read-only, no permission,
disk full) ends the run with an `OutputFolderError` naming the path; results are written atomically (temporary
file, then rename), so nothing half-written is ever reported.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from typing import Any, Optional

from filelock import FileLock, Timeout

from multimodal.config.loading import save_config
from multimodal.config.schema import ConfigError
from multimodal.files import write_json
from multimodal.training.checkpoints import resolve_latest, verify_checkpoint
from multimodal.training.integrity import CheckpointError

# What a run leaves behind that a later run could mistake for its own results.
RUN_MARKERS = ("metrics.json", "model", "checkpoints")
# Everything `multimodal.run` writes into its output folder (deleted on overwrite; nothing else is).
RUN_OUTPUTS = ("model", "checkpoints", "baselines", "splits", "logs", "metrics.json", "config.yaml", "labels.json",
               "report.md", "report.html", "training_curves.png", "inferred_columns.json", "recall_at_k.png", "confusion_matrix.png",
               "retrieval_*_to_*.png")


LOCK_NAME = ".run.lock"  # the OS lock (its content means nothing)
HOLDER_NAME = ".run.lock.json"  # who holds it: pid, host, start time (removed when the run ends)


class OutputFolderError(ConfigError):
    """``train.output_dir`` cannot be used: another run holds it, or it cannot be written (the message names the
    path and the reason)."""


def folder_error(err: OSError, output_dir: str) -> OutputFolderError:
    """A one-line `OutputFolderError` for an OSError writing under `output_dir` (disk full, read-only, denied)."""
    path = err.filename or output_dir
    return OutputFolderError(f"train.output_dir {output_dir!r}: cannot write {path!r}: {err.strerror or err}")


def _is_folder_error(err: OSError, output_dir: str) -> bool:
    """A full or read-only disk anywhere, or a denied write under `output_dir` (not a user's unreadable data file)."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG):
        return True
    inside = isinstance(err.filename, str) and os.path.abspath(err.filename).startswith(os.path.abspath(output_dir))
    return err.errno in (errno.EACCES, errno.EPERM) and inside


def _holder(output_dir: str) -> Optional[dict]:
    try:
        with open(os.path.join(output_dir, HOLDER_NAME), encoding="utf-8") as f:
            holder = json.load(f)
        return holder if isinstance(holder, dict) else None
    except (OSError, ValueError):
        return None


def _describe(holder: Optional[dict]) -> str:
    if not holder:
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0))))
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {started}"


@contextlib.contextmanager
def hold_output_dir(output_dir: str, log: Any = print) -> Iterator[None]:
    """Hold the exclusive lock of `output_dir` (created if needed) while the block runs; `OutputFolderError` when
    another run holds it or the folder cannot be written. Take it on one process per run (the main one)."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        lock = FileLock(os.path.join(output_dir, LOCK_NAME), timeout=0)
        lock.acquire()
    except Timeout:
        raise OutputFolderError(
            f"train.output_dir {output_dir!r} is in use by another run ({_describe(_holder(output_dir))}); wait for it "
            "to finish, or choose another train.output_dir") from None
    except OSError as err:
        raise folder_error(err, output_dir) from None
    try:
        stale = _holder(output_dir)
        if stale:
            log(f"train.output_dir: took over the lock of a run that ended without releasing it ({_describe(stale)})")
        write_json(os.path.join(output_dir, HOLDER_NAME), {"pid": os.getpid(), "host": socket.gethostname(),
                                                             "started": time.time()})
        yield
    except OSError as err:
        if _is_folder_error(err, output_dir):
            raise folder_error(err, output_dir) from None
        raise
    finally:
        with contextlib.suppress(OSError):
            os.remove(os.path.join(output_dir, HOLDER_NAME))
        lock.release()


def previous_run(output_dir: str) -> list[str]:
    """The markers of an earlier run found in `output_dir` (empty: the folder is free)."""
    found = []
    for name in RUN_MARKERS:
        path = os.path.join(output_dir, name)
        if os.path.isfile(path) or (os.path.isdir(path) and os.listdir(path)):
            found.append(name + ("/" if os.path.isdir(path) else ""))
    return found


def check_resume(train: Any) -> str:
    """The checkpoint ``train.resume_from`` names ("latest": the newest usable one); `ConfigError` if none.

    With none usable, the message names every folder skipped and why."""
    resume = train.resume_from
    root = os.path.join(train.output_dir, "checkpoints")
    if resume == "latest":
        path, _, skipped = resolve_latest(root)
        if path is None:
            why = "".join(f"\n  skipped {s}" for s in skipped)
            raise ConfigError(f"train.resume_from=latest: no complete, intact checkpoint under {root!r}, so there is "
                              f"nothing to resume; drop train.resume_from to start a new run{why}")
        return path  # the trainer names the folders it skipped, with the reason
    if not os.path.exists(resume):
        raise ConfigError(f"train.resume_from: {resume!r} does not exist; give a folder under {root!r} or 'latest'")
    try:
        verify_checkpoint(resume)
    except CheckpointError as err:
        raise ConfigError(f"train.resume_from: {err}") from None
    return resume


def remove_run_outputs(output_dir: str) -> list[str]:
    """Delete what an earlier run wrote into `output_dir` (the names in `RUN_OUTPUTS` only); returns them."""
    removed = []
    for pattern in RUN_OUTPUTS:
        for path in sorted(glob.glob(os.path.join(glob.escape(output_dir), pattern))):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
            removed.append(os.path.basename(path))
    return removed


def prepare_output_dir(train: Any, is_main: bool = True) -> str:
    """Check (and on overwrite, clear) ``train.output_dir`` for a new or resumed run; returns a line for the log.

    Call it on every process; only the main one deletes. The caller waits for all processes afterwards.
    """
    out = train.output_dir
    if train.resume_from:
        return f"resuming from {check_resume(train)}"
    found = previous_run(out)
    if not found:
        return ""
    if getattr(train, "overwrite_output_dir", False):
        removed = remove_run_outputs(out) if is_main else []
        return f"train.overwrite_output_dir: removed the earlier run's {', '.join(removed) or 'outputs'} from {out}"
    metrics = os.path.join(out, "metrics.json")
    if os.path.isfile(metrics):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(metrics)))
        what = f"a finished run (metrics.json written {when})"
    else:
        what = f"an unfinished run ({', '.join(found)})"
    raise ConfigError(
        f"train.output_dir {out!r} already holds {what}; this run would mix its results with that one. Set "
        "train.resume_from=latest to continue it, train.overwrite_output_dir=true to replace it, or choose another "
        "train.output_dir"
    )


def open_run_folder(cfg: Any, state: Any) -> None:
    """Check (and on overwrite, clear) the run folder on every process, then write the resolved ``config.yaml``
    from the main one; `state` is accelerate's process state."""
    note = prepare_output_dir(cfg.train, is_main=state.is_main_process)
    if note:
        state.print(note)
    state.wait_for_everyone()
    if state.is_main_process:
        os.makedirs(cfg.train.output_dir, exist_ok=True)
        save_config(cfg, os.path.join(cfg.train.output_dir, "config.yaml"))


def require_model(output_dir: str, train: Any, state: Any) -> None:
    """Raise `ConfigError` when training left no model in ``<output_dir>/model`` to evaluate: with
    ``train.stop_after_steps``, training can stop before an epoch's evaluation saved one."""
    if os.path.isfile(os.path.join(output_dir, "model", "config.json")):
        return
    stop = getattr(train, "stop_after_steps", None)
    if stop is None or state.global_step < stop:
        raise ConfigError(f"training wrote no model to {os.path.join(output_dir, 'model')!r}")
    when = "before the first epoch ended" if state.epoch == 0 else "before any epoch's validation improved"
    saved = (f"checkpoint {os.path.join(output_dir, 'checkpoints', f'step-{state.global_step:07d}')!r} was saved: "
             "continue with train.resume_from=latest" if train.save_checkpoints else "no checkpoint was saved")
    raise ConfigError(
        f"train.stop_after_steps={stop} stopped training at optimizer step {state.global_step}, {when}, so there "
        f"is no model to evaluate yet ({saved}, or raise train.stop_after_steps)"
    )
