"""Old import paths that keep working for one release: a module-level ``__getattr__`` that warns and forwards.

A module whose names moved keeps only this (``__getattr__ = moved(__name__, new_module)``), so
``from old.path import Name`` still works and raises a `DeprecationWarning` naming the new home every time.
Where the names went to several modules, or the new homes must not be imported up front (the torch-free deploy
runtime), `relocated` takes a table of dotted homes and imports each on first use.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from importlib import import_module
from types import ModuleType
from typing import Any, Optional


def moved(old: str, new: ModuleType, extra: Optional[Mapping[str, tuple[Any, str]]] = None) -> Callable[[str], Any]:
    """A module ``__getattr__`` for module `old`: public names resolve in `new` with a warning; `extra` maps
    names that have no namesake there to (value, what to use instead)."""
    extra = dict(extra or {})

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        if name in extra:
            value, where = extra[name]
        elif hasattr(new, name):
            value, where = getattr(new, name), f"{new.__name__}.{name}"
        else:
            raise AttributeError(f"module {old!r} has no attribute {name!r} (it moved to {new.__name__})")
        warnings.warn(f"{old}.{name} is deprecated and goes away in the next release: use {where}",
                      DeprecationWarning, stacklevel=2)
        return value

    return __getattr__


def relocated(old: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for module `old` whose names moved to several modules: `homes` maps each old name to
    ``"new.module"`` (same name) or ``"new.module:new_name"``, imported on first use, with a warning."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        module, _, new_name = homes[name].partition(":")
        new_name = new_name or name
        warnings.warn(f"{old}.{name} is deprecated and goes away in the next release: use {module}.{new_name}",
                      DeprecationWarning, stacklevel=2)
        return getattr(import_module(module), new_name)

    return __getattr__
