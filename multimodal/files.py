"""Files written atomically: a reader (a resumed run, a report viewer, another process) sees the old file or the
whole new one, never a torn one."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from encoders.base import jsonable


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary file beside `path` for the block to write (by name); renamed over `path` when the block ends
    without an error, removed when it raises."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> str:
    """Write `text` to `path` atomically (a temporary file in the same folder, fsynced, then renamed over it)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return os.fspath(path)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> str:
    """Write `obj` (made JSON-ready by `encoders.base.jsonable`) to `path` atomically."""
    return write_text(path, json.dumps(jsonable(obj), indent=indent))
