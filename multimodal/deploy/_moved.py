"""Old import paths of the deploy package that keep working for one release, with a DeprecationWarning."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from importlib import import_module
from typing import Any


def moved(old_module: str, homes: dict[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for `old_module` whose names now live elsewhere: `homes` maps each old name
    to ``"new.module"`` (same name) or ``"new.module:new_name"``; using an old name warns once per call site."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        module, _, new_name = homes[name].partition(":")
        new_name = new_name or name
        warnings.warn(f"{old_module}.{name} moved to {module}.{new_name}; the old name will be removed in the next "
                      "release", DeprecationWarning, stacklevel=2)
        return getattr(import_module(module), new_name)

    return __getattr__
