"""Which failures are the user's to fix, and how the recipes and CLIs report them.

A user error (a bad config, bad data, an encoder that cannot be loaded, a model folder that cannot be
read, a checkpoint that cannot be resumed, a loss or weights that diverged) ends the program with its
message alone on stderr and exit status 1. With ``--debug`` on the command line or ``MULTIMODAL_DEBUG=1`` in
the environment it is raised as usual, with its traceback. Any other exception is an internal error and always shows its traceback. Ctrl-C ends with
status 130 and one line.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Optional

from encoders import EncoderError
from multimodal.config.schema import ConfigError
from multimodal.data.dataset import DataError
from multimodal.models.base import ModelFolderError
from multimodal.training.integrity import CheckpointError, NonFiniteLossError, NonFiniteWeightsError

DEBUG_ENV = "MULTIMODAL_DEBUG"
DEBUG_FLAG = "--debug"
DEBUG_HELP = f"show the full traceback of a user error (also {DEBUG_ENV}=1)"
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, DataError, EncoderError, ModelFolderError,
                                                 NonFiniteLossError, CheckpointError, NonFiniteWeightsError)


def debug_requested(argv: Optional[Sequence[str]] = None) -> bool:
    """Whether tracebacks were asked for: ``--debug`` in `argv` or a true ``MULTIMODAL_DEBUG``."""
    if argv is not None and DEBUG_FLAG in argv:
        return True
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def without_debug_flag(argv: Sequence[str]) -> list[str]:
    """`argv` without ``--debug``."""
    return [a for a in argv if a != DEBUG_FLAG]


def message(err: BaseException) -> str:
    """The one line (or paragraph) a user error is reported with."""
    label = "config error" if isinstance(err, ConfigError) else "error"
    rank = os.environ.get("RANK")
    world = os.environ.get("WORLD_SIZE", "1")
    where = f"[process {rank}] " if rank is not None and world not in ("", "1") else ""
    return f"{where}{label}: {err}"


@contextlib.contextmanager
def user_errors(debug: bool = False, extra: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Turn a user error inside the block (`USER_ERRORS`, plus the command's own `extra` kinds) into
    ``SystemExit`` with its message (unless `debug`)."""
    try:
        yield
    except (*USER_ERRORS, *extra) as err:
        if debug or debug_requested():
            raise
        raise SystemExit(message(err)) from None
    except KeyboardInterrupt:
        if debug or debug_requested():
            raise
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
