"""The one registry idiom (`Registry`, `UnknownNameError`) and the task registry built on it.

`Registry` lives in `encoders.registry` because `encoders` and `fusion` sit below `multimodal` and must not
import it; this is its public home for everything above them. The tables that use it:

- encoder kinds: `encoders.registry.ENCODERS` (`encoders.register_encoder`)
- fusions: `fusion.registry.FUSIONS` (`fusion.register_fusion`)
- tasks: `TASKS` here (`register_task`); `model.task` in a config selects one
- model types: `multimodal.models.base.MODEL_TYPES` (`register_model_type`); `load_model` reads it
- demos: `multimodal.data.demos.DEMOS` (`register_demo`); `data.demo` selects one

The task table is kept apart from the task implementations (`multimodal.tasks`) so that the config loader
can check names against it without importing them; the built-in tasks register themselves when
`multimodal.tasks` is imported, which the first read through these functions does (`_load_builtin_tasks`):
`multimodal` itself loads its names lazily, so that the deploy runtime imports without torch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Optional, TypeVar, Union

from encoders.registry import DuplicateNameError, Entry, Registry, UnknownNameError, first_doc_line

T = TypeVar("T", bound=type)

__all__ = [
    "TASKS",
    "DuplicateNameError",
    "Entry",
    "Registry",
    "TaskInfo",
    "UnknownNameError",
    "canonical_task_name",
    "get_task",
    "list_tasks",
    "register_task",
    "task_names",
]


def _check_task_class(name: str, cls: object) -> None:
    if not isinstance(cls, type):
        raise TypeError(f"register_task({name!r}): expected a class, got {cls!r}")


TASKS: Registry[type] = Registry("task", validate=_check_task_class)


@dataclass(frozen=True)
class TaskInfo:
    """One row of `list_tasks()`."""

    name: str
    description: str


def register_task(name: str, cls: Optional[T] = None, aliases: Sequence[str] = (), *,
                  override: bool = False) -> Union[T, Callable[[T], T]]:
    """Register a `multimodal.tasks.Task` subclass under `name` (a plain call, or a class decorator when `cls`
    is omitted). Registering the same class again is a no-op; another class under a taken name (or alias)
    raises `DuplicateNameError` (a ValueError) unless `override`."""
    return TASKS.register(name, cls, override=override, aliases=tuple(aliases))


def _load_builtin_tasks() -> None:
    """Import `multimodal.tasks` (its modules register the built-in tasks) before the registry is read."""
    if "multimodal.tasks" not in sys.modules:
        import_module("multimodal.tasks")


def canonical_task_name(name: str) -> str:
    """The registered name for `name` (resolving aliases such as 'contrastive' -> 'retrieval')."""
    _load_builtin_tasks()
    return TASKS.canonical(name)


def get_task(name: str) -> Any:
    """The task class registered as `name` (or an alias); `UnknownNameError` (a KeyError) names the known ones."""
    _load_builtin_tasks()
    return TASKS.get(name)


def task_names(pattern: str = "*") -> list[str]:
    """Registered task names and aliases matching `pattern`, sorted."""
    _load_builtin_tasks()
    return sorted(TASKS.list(pattern, aliases=True))


def list_tasks(pattern: str = "*") -> list[TaskInfo]:
    """Every registered task matching `pattern`, with the first line of its docstring, sorted by name."""
    _load_builtin_tasks()
    return [TaskInfo(e.name, first_doc_line(e.obj)) for e in sorted(TASKS.entries(pattern), key=lambda e: e.name)]
