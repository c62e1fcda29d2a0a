"""Public names of a package that load on first use (PEP 562), so that importing one light submodule does not
import everything the package exports (``encoders.samples`` without torch, `multimodal.deploy.runtime`)."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from importlib.util import find_spec
from typing import Any, Optional


def lazy_exports(package: str, exports: dict[str, str], namespace: dict[str, Any],
                 first: Optional[str] = None) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module-level ``__getattr__`` and ``__dir__`` for `package`: a name of `exports` (name -> module) is imported
    from its module on first use (after the module `first`, e.g. one that registers built-ins) and kept in
    `namespace` (the package's globals); any other public name loads the submodule of that name."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            if first is not None:
                import_module(first)
            value = getattr(import_module(exports[name]), name)
        elif not name.startswith("_") and find_spec(f"{package}.{name}") is not None:
            value = import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
