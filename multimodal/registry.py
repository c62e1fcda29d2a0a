"""The task registry: `register_task` adds a task class under a name that `model.task` in a config selects.

Kept apart from the task implementations (`multimodal.tasks`) so that the config loader can check names
against it without importing them at import time; the built-in tasks register themselves when
`multimodal.tasks` is imported, which the first read of the registry does (`_load_builtin_tasks`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Optional, TypeVar

_TASKS: dict[str, type] = {}
_ALIASES: dict[str, str] = {}

T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class TaskInfo:
    """One row of `list_tasks()`."""

    name: str
    description: str


def register_task(name: str, cls: Optional[type] = None, aliases: tuple[str, ...] = ()) -> Any:
    """Register a `multimodal.tasks.Task` subclass under `name` (a plain call, or a class decorator when `cls`
    is omitted). Registering the same class again is a no-op; another class under a taken name is an error."""

    def add(task_cls: T) -> T:
        if not isinstance(task_cls, type):
            raise TypeError(f"register_task({name!r}): expected a class, got {task_cls!r}")
        for key in (name, *aliases):
            taken = _TASKS.get(key) or _TASKS.get(_ALIASES.get(key, ""))
            if taken is not None and taken is not task_cls:
                raise ValueError(f"task name {key!r} is already registered to {taken.__name__}")
        _TASKS[name] = task_cls
        for alias in aliases:
            _ALIASES[alias] = name
        return task_cls

    if cls is not None:
        return add(cls)
    return add


def _load_builtin_tasks() -> None:
    """Import `multimodal.tasks` (its modules register the built-in tasks) before the registry is read: the
    package no longer imports everything up front (`multimodal.__init__` loads names lazily)."""
    if "multimodal.tasks" not in sys.modules:
        import_module("multimodal.tasks")


def canonical_task_name(name: str) -> str:
    """The registered name for `name` (resolving aliases such as 'contrastive' -> 'retrieval')."""
    _load_builtin_tasks()
    return _ALIASES.get(name, name)


def get_task(name: str) -> type:
    """The task class registered as `name` (or an alias); the error lists the known names."""
    key = canonical_task_name(name)
    if key not in _TASKS:
        raise KeyError(f"unknown task {name!r}; registered tasks: {', '.join(task_names())}")
    return _TASKS[key]


def task_names() -> list[str]:
    """Registered task names and aliases, sorted."""
    _load_builtin_tasks()
    return sorted(set(_TASKS) | set(_ALIASES))


def list_tasks() -> list[TaskInfo]:
    """Every registered task with the first line of its docstring."""
    _load_builtin_tasks()
    return [TaskInfo(n, (c.__doc__ or "").strip().split("\n")[0]) for n, c in sorted(_TASKS.items())]

