"""Progress bars that suit where the output goes: a live tqdm bar on a terminal (or in a notebook), and in a
log file or a pipe at most one plain line every `LOG_INTERVAL_S` seconds and one at the end, instead of
hundreds of carriage-return redraws (a loop shorter than the interval writes its last line only).

Every loop that shows progress (training epochs, dataset checks, the feature cache, batch prediction) opens
its bar with `progress_bar`. ``MULTIMODAL_PROGRESS_INTERVAL`` (seconds) changes the logging interval.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import IO, Any, Optional

from tqdm import tqdm
from tqdm.auto import tqdm as live_tqdm

LOG_INTERVAL_S = 30.0
LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
INTERVAL_ENV = "MULTIMODAL_PROGRESS_INTERVAL"


class LineProgress(tqdm):
    """A tqdm bar that writes whole lines (no carriage returns): none before `mininterval` seconds, then at most
    one per `mininterval` seconds, and a last one when it closes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._last_write: Optional[float] = None  # set before tqdm's own init, which may already display
        self._written: Optional[tuple] = None  # (n, postfix) of the last line written
        super().__init__(*args, **kwargs)

    def display(self, msg: Optional[str] = None, pos: Optional[int] = None) -> bool:
        """Write the bar's state as one line, unless one was written less than `mininterval` seconds ago (tqdm's
        clearing calls, with an empty message, write nothing)."""
        if msg == "":
            return False  # nothing was cleared, so tqdm writes no carriage return either
        now = self._time()
        since = self._last_write if self._last_write is not None else getattr(self, "start_t", now)
        if now - since < self.mininterval:
            return True
        self._write(msg)
        return True

    def _write(self, msg: Optional[str] = None) -> None:
        self.fp.write((msg if msg is not None else str(self)).strip() + "\n")
        self.fp.flush()
        self._last_write, self._written = self._time(), (self.n, self.postfix)

    def close(self) -> None:
        """Write the final state once (unless the last line already shows it), then close."""
        if not self.disable and self._written != (self.n, self.postfix) and hasattr(self, "fp"):
            self._write()
        self.leave = False  # the final line is already written; tqdm's own would repeat it
        super().close()


def interactive(stream: IO[str]) -> bool:
    """Whether `stream` is watched live: a terminal, or a notebook kernel's output."""
    if "ipykernel" in sys.modules:
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def log_interval() -> float:
    """Seconds between two progress lines in a log (``MULTIMODAL_PROGRESS_INTERVAL`` or `LOG_INTERVAL_S`)."""
    try:
        value = float(os.environ.get(INTERVAL_ENV, LOG_INTERVAL_S))
    except ValueError:
        return LOG_INTERVAL_S
    return value if value >= 0 else LOG_INTERVAL_S


def progress_bar(iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: str = "", initial: int = 0,
                 leave: bool = False, disable: bool = False, unit: str = "it", stream: Optional[IO[str]] = None) -> Any:
    """A tqdm bar over `iterable` (or updated by hand up to `total`): live when `stream` (default stderr) is a
    terminal or a notebook, else a `LineProgress` writing one line per `log_interval()` seconds."""
    stream = stream if stream is not None else sys.stderr
    kwargs = {"total": total, "desc": desc, "initial": initial, "disable": disable, "unit": unit, "file": stream}
    if interactive(stream):
        return live_tqdm(iterable, leave=leave, **kwargs)
    interval = log_interval()
    return LineProgress(iterable, leave=False, mininterval=interval, delay=interval, miniters=1, bar_format=LOG_FORMAT,
                        **kwargs)
