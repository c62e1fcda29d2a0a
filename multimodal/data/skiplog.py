"""Rows skipped while loading, by whichever process loads them.

With ``data.validate=false`` (or a file that passes its quick check but fails to decode in full) a bad row is
found in a DataLoader worker or on another DDP rank, not where the report is written. `SkipLog` is an
append-only JSON-lines file in the temporary folder: every process that skips a row appends one line (one
small ``write`` in append mode, so lines from several processes do not mix), and the process that reports
reads them back, each row once. The file belongs to the process that made the log and is deleted with it.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
import weakref
from collections.abc import Iterable
from typing import Any


def _remove(path: str, owner: int) -> None:
    if os.getpid() == owner:  # a forked DataLoader worker's copy must not delete the owner's file
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


class SkipLog:
    """Append-only record of skipped rows: ``{"row": table position, "reason": ..., "message": ...}``."""

    def __init__(self) -> None:
        self.path = os.path.join(tempfile.gettempdir(), f"multimodal-skips-{os.getpid()}-{uuid.uuid4().hex}.jsonl")
        self.extra: list[dict[str, Any]] = []  # records gathered from other processes
        weakref.finalize(self, _remove, self.path, os.getpid())

    def add(self, row: int, reason: str, message: str) -> None:
        """Record that table row position `row` was skipped (from any process)."""
        line = json.dumps({"row": int(row), "reason": reason, "message": message[:2000]}) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)

    def absorb(self, records: Iterable[dict[str, Any]]) -> None:
        """Add records another process made (e.g. gathered from the other DDP ranks)."""
        self.extra.extend(records)

    def records(self) -> list[dict[str, Any]]:
        """Every skipped row once (the first record of each), in row order."""
        found: dict[int, dict[str, Any]] = {}
        lines: list[str] = []
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a process killed while writing it
            found.setdefault(int(rec["row"]), rec)
        for rec in self.extra:
            found.setdefault(int(rec["row"]), rec)
        return [found[r] for r in sorted(found)]
