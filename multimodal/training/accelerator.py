"""Setting up accelerate: the process state every rank shares, and the Accelerator a `Trainer` makes when given
none (mixed precision, gradient accumulation and the experiment tracker from the train config)."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Optional

from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs, parse_flag_from_env


def process_state(timeout_s: float | None = None) -> Any:
    """accelerate's `PartialState`, honouring ``ACCELERATE_USE_CPU`` (as `Accelerator` does) so that
    ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2`` runs DDP on CPU (gloo).
    `timeout_s` bounds every collective of the process group (it applies where the group is first set up)."""
    kwargs = {"timeout": timedelta(seconds=float(timeout_s))} if timeout_s else {}
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"), **kwargs)


def finish_processes() -> None:
    """The successful end of a launched run: every process waits for the others, then tears its process group
    down while the interpreter is still whole. Left to interpreter exit, gloo's worker threads can outlive it and
    a process aborts ("terminate called without an active exception"), failing a run that had finished. A no-op
    in a single process. Not for error paths: a process that failed must not wait for the others."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def resolve_log_with(value: str) -> Optional[str]:
    """The tracker for ``train.log_with``: "none" -> None; "auto" -> tensorboard when it is installed."""
    if value == "none":
        return None
    if value == "tensorboard":
        return "tensorboard"
    try:
        import tensorboard  # noqa: F401  (an optional dependency: only its presence is asked)

        return "tensorboard"
    except ImportError:
        return None


def make_accelerator(config: Any, unfreeze_later: bool = False) -> Accelerator:
    """The Accelerator a `Trainer` makes when given none: mixed precision, accumulation and the tracker from
    the train config. Encoders unfrozen later get gradients only from then on, so DDP must then tolerate
    unused parameters."""
    log_with = resolve_log_with(config.log_with)
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if unfreeze_later else []
    return Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.grad_accum_steps,
        log_with=log_with,
        project_dir=os.path.join(config.output_dir, "logs") if log_with else None,
        kwargs_handlers=handlers,
    )


def flat_config(d: dict, prefix: str = "") -> dict:
    """A nested config dict as the flat ``{"train.head_lr": 0.001}`` scalars a tracker records."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        else:
            out[key] = str(v)
    return out
