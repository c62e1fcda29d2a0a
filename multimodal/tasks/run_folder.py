"""The run folder (``train.output_dir``): what the runner checks, clears and requires in it, so that two runs'
results never mix.

`open_run_folder` runs at the start of `multimodal.run`, before any data is read. A folder that holds an
earlier run (``metrics.json``, ``model/`` or ``checkpoints/``) is refused with a `ConfigError` saying how to
go on: resume it (``train.resume_from``), replace it (``train.overwrite_output_dir=true``, which first
deletes what the earlier run wrote there and nothing else) or pick another ``train.output_dir``. A resume
needs a checkpoint to resume from.
"""

from __future__ import annotations

import glob
import os
import shutil
import time
from typing import Any

from multimodal.config.loading import save_config
from multimodal.config.schema import ConfigError
from multimodal.training.checkpoints import resolve_latest, verify_checkpoint
from multimodal.training.integrity import CheckpointError

# What a run leaves behind that a later run could mistake for its own results.
RUN_MARKERS = ("metrics.json", "model", "checkpoints")
# Everything `multimodal.run` writes into its output folder (deleted on overwrite; nothing else is).
RUN_OUTPUTS = ("model", "checkpoints", "baselines", "splits", "logs", "metrics.json", "config.yaml", "labels.json",
               "report.md", "report.html", "training_curves.png", "inferred_columns.json", "recall_at_k.png", "confusion_matrix.png",
               "retrieval_*_to_*.png")


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
