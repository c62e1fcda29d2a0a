"""Numeric ranges of the config: each number's `Range` is field metadata on the schema (`multimodal.config.schema`);
`check_ranges` walks every numeric field (sections, optional sections, lists and mappings of numbers included)
and refuses a value that is not finite or lies outside its range, naming the key."""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any, Optional

from multimodal.config.schema import ConfigError, Range, short


def _numeric_kind(tp: Any) -> Optional[type]:
    """int or float when a field's type is (an optional, a list or a mapping of) that number, else None."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        kinds = {_numeric_kind(a) for a in typing.get_args(tp) if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else None
    if origin in (list, tuple, dict):
        args = typing.get_args(tp)
        return _numeric_kind(args[-1 if origin is dict else 0]) if args else None
    return tp if tp in (int, float) else None


def _section(tp: Any) -> Optional[type]:
    """The dataclass of a section field (``X`` or ``Optional[X]``), else None."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    tp = args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1 else tp
    return tp if dataclasses.is_dataclass(tp) else None


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """`typing.get_type_hints` of a config dataclass, resolved once per class."""
    return typing.get_type_hints(cls)


@functools.cache
def numeric_fields(cls: type, prefix: str = "") -> list[tuple[str, type, Optional[Range]]]:
    """(dotted key, int or float, declared range or None) for every numeric field of a config dataclass tree,
    optional sections (``model.peft``, ``train.adversarial``, ...) included."""
    out: list[tuple[str, type, Optional[Range]]] = []
    hints = type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        section = _section(hints[f.name])
        if section is not None:
            out.extend(numeric_fields(section, key + "."))
            continue
        kind = _numeric_kind(hints[f.name])
        if kind is not None:
            out.append((key, kind, f.metadata.get("range")))
    return out


def _values(cfg: Any, key: str, prefix: str) -> list[tuple[str, Any]]:
    """(where, value) for each number held at dotted `key` of `cfg` (the section at `prefix`); none inside an
    unset optional section."""
    *sections, name = key[len(prefix):].split(".")
    for part in sections:
        cfg = getattr(cfg, part)
        if cfg is None:
            return []
    value = getattr(cfg, name)
    if isinstance(value, dict):
        return [(f"{key}.{k}", v) for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        return [(f"{key}[{i}]", v) for i, v in enumerate(value)]
    return [(key, value)]


def check_ranges(cfg: Any, prefix: str = "") -> None:
    """Raise `ConfigError` for a numeric value that is not finite or outside its field's range.

    `cfg` is a whole config or one section of it with its dotted `prefix` (``check_ranges(cfg.train, "train.")``).
    """
    for key, _kind, allowed in numeric_fields(type(cfg), prefix):
        for where, v in _values(cfg, key, prefix):
            if v is None:
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{where}: {v} is not a finite number"
                                  + (f"; allowed: {allowed.describe()}" if allowed else ""))
            if allowed is not None and not allowed.contains(v):
                raise ConfigError(f"{where}: {short(v)} is out of range; allowed: {allowed.describe()}")
