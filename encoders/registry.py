"""One registry idiom for every table of named things, and the table of encoder kinds built on it.

`Registry` is what encoder kinds, fusions, tasks, model types and demos all use: `register` (a call or a
class decorator; a taken name is refused unless ``override=True``), `get` (an `UnknownNameError` that
suggests the closest name and lists the known ones), `list` with wildcards like timm's ``list_models``,
`is_registered` / ``in``. It lives here, in the bottom layer, because `encoders` and `fusion` sit below
`multimodal` and must not import it; `multimodal.registry` re-exports it.
"""

from __future__ import annotations

import builtins
import difflib
import fnmatch
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, Optional, TypeVar, Union, overload

from encoders.base import EncoderError, EncoderInfo

T = TypeVar("T")
C = TypeVar("C", bound=type)


class UnknownNameError(KeyError):
    """A name that no registry entry has; the message suggests the closest name and lists the known ones."""

    def __init__(self, message: str, name: object = None, known: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.name, self.known = name, list(known)

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(ValueError):
    """A name already registered to another object (pass ``override=True`` to replace it)."""


class UnknownEncoderError(UnknownNameError, EncoderError):
    """An encoder kind that is not registered (also an `EncoderError`, which callers caught before)."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object: its name, any extra information given at registration, and visibility."""

    name: str
    obj: T
    info: Mapping[str, Any] = field(default_factory=dict)
    hidden: bool = False


def describe(obj: object) -> str:
    """``module.QualName`` for classes and functions, "a <type>" for other objects (for error messages)."""
    if isinstance(obj, type) or callable(obj) and hasattr(obj, "__qualname__"):
        return f"{obj.__module__}.{obj.__qualname__}"
    return f"a {type(obj).__name__}"


def first_doc_line(obj: object) -> str:
    """The first line of `obj`'s docstring, or ''."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


class Registry(Generic[T]):
    """Named objects of one kind (`what`, e.g. "fusion"), in registration order.

    `validate(name, obj)` checks an object before it is added (raising TypeError/ValueError); `casefold`
    matches names case- and space-insensitively; `error` is the `UnknownNameError` subclass `get` raises.
    A name may carry aliases (`get` resolves them) and be `hidden` (left out of `list`, still found by `get`).
    """

    def __init__(self, what: str, *, validate: Optional[Callable[[str, T], None]] = None, casefold: bool = False,
                 error: type[UnknownNameError] = UnknownNameError) -> None:
        self.what, self.validate, self.casefold, self.error = what, validate, casefold, error
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}

    def key(self, name: object) -> str:
        """The stored form of `name` (stripped and lower-cased when the registry folds case)."""
        if not isinstance(name, str):
            raise TypeError(f"{self.what} name must be a string, got {type(name).__name__}")
        return name.strip().lower() if self.casefold else name

    @overload
    def register(self, name: str, obj: None = None, *, override: bool = False, hidden: bool = False,
                 aliases: Sequence[str] = (), **info: Any) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T, *, override: bool = False, hidden: bool = False,
                 aliases: Sequence[str] = (), **info: Any) -> T: ...

    def register(self, name: str, obj: Optional[T] = None, *, override: bool = False, hidden: bool = False,
                 aliases: Sequence[str] = (), **info: Any) -> Union[T, Callable[[T], T]]:
        """Add `obj` under `name` (without `obj`: a decorator). Registering the same object again is a no-op;
        another object under a taken name (or alias) raises `DuplicateNameError` unless `override`."""
        key = self.key(name)

        def add(item: T) -> T:
            if self.validate is not None:
                self.validate(key, item)
            alias_keys = [self.key(a) for a in aliases]
            if not override:
                for k in (key, *alias_keys):
                    self._refuse_taken(k, item)
            if override or key not in self._entries:  # the same object again keeps its first entry
                self._entries[key] = Entry(key, item, dict(info), hidden)
            self._aliases.update({a: key for a in alias_keys})
            return item

        return add if obj is None else add(obj)

    def _refuse_taken(self, key: str, item: T) -> None:
        taken = self._entries.get(self._aliases.get(key, key))
        if taken is not None and taken.obj is not item and taken.obj != item:
            raise DuplicateNameError(f"{self.what} {key!r} is already registered to {describe(taken.obj)}; cannot "
                                     f"register {describe(item)} under it too (pick another name, or pass override=True)")

    def canonical(self, name: object) -> str:
        """The registered name for `name` or one of its aliases (unchecked)."""
        key = self.key(name) if isinstance(name, str) else str(name)
        return self._aliases.get(key, key)

    def entry(self, name: object) -> Entry[T]:
        """The `Entry` registered as `name` (or an alias); `UnknownNameError` if there is none."""
        if not self.is_registered(name):
            raise self.unknown(name)
        return self._entries[self.canonical(name)]

    def get(self, name: object) -> T:
        """The object registered as `name` (or an alias); `UnknownNameError` if there is none."""
        return self.entry(name).obj

    def unknown(self, name: object) -> UnknownNameError:
        """The error for an unknown `name`: the closest known name, then all of them."""
        known = self.list()
        probe = self.key(name) if isinstance(name, str) else str(name)
        close = difflib.get_close_matches(probe, [*known, *self._aliases], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return self.error(f"unknown {self.what} {name!r}{hint}; known: {', '.join(known) or 'none'}", name, known)

    def is_registered(self, name: object) -> bool:
        """True when `name` is a registered name or alias."""
        return isinstance(name, str) and self.canonical(name) in self._entries

    def __contains__(self, name: object) -> bool:
        return self.is_registered(name)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def list(self, pattern: Union[str, Sequence[str]] = "*", *, hidden: bool = False,
             aliases: bool = False) -> builtins.list[str]:
        """Registered names matching the wildcard `pattern` (or any of several), in registration order;
        hidden names and aliases only when asked for."""
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        if self.casefold:
            patterns = [p.lower() for p in patterns]
        names = [n for n, e in self._entries.items() if hidden or not e.hidden]
        if aliases:
            names += [a for a, n in self._aliases.items() if hidden or not self._entries[n].hidden]
        return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]

    def entries(self, pattern: Union[str, Sequence[str]] = "*", *, hidden: bool = False) -> builtins.list[Entry[T]]:
        """The `Entry` of every name `list(pattern, hidden=hidden)` gives."""
        return [self._entries[n] for n in self.list(pattern, hidden=hidden)]

    def unregister(self, name: str) -> T:
        """Remove `name` (and its aliases); returns what was registered."""
        key = self.canonical(name)
        entry = self.entry(key)
        del self._entries[key]
        self._aliases = {a: n for a, n in self._aliases.items() if n != key}
        return entry.obj

    @contextmanager
    def scratch(self) -> Iterator[Registry[T]]:
        """Registrations made inside the block are undone at its end (for tests and experiments)."""
        entries, aliases = dict(self._entries), dict(self._aliases)
        try:
            yield self
        finally:
            self._entries, self._aliases = entries, aliases

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {self.list(hidden=True)})"


# ------------------------------------------------------------------------------------------- encoder kinds
# The class-level contract every registered kind follows (instances also need `get_config()`).
REQUIRED_METHODS = ("create", "from_config", "get_config")


def _check_encoder_class(kind: str, cls: object) -> None:
    if not kind or ":" in kind or any(c.isspace() for c in kind):
        raise ValueError(f"encoder kind must be a non-empty name without ':' or spaces, got {kind!r}")
    if not isinstance(cls, type):
        raise TypeError(f"register_encoder({kind!r}): expected a class, got {type(cls).__name__}")
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(cls, m, None))]
    if missing:
        raise TypeError(
            f"register_encoder({kind!r}): {cls.__qualname__} lacks {', '.join(missing)}; an encoder class needs "
            "classmethods create(name, pretrained=True, **kwargs) and from_config(config, assets_dir), and "
            "get_config() returning a dict with 'kind'"
        )


# kind -> encoder class, in registration order (built-ins first: encoders.factory registers them on import).
ENCODERS: Registry[type] = Registry("encoder kind", validate=_check_encoder_class, casefold=True,
                                    error=UnknownEncoderError)


@overload
def register_encoder(kind: str, cls: None = None, description: str = "", example: str = "", *,
                     override: bool = False) -> Callable[[C], C]: ...


@overload
def register_encoder(kind: str, cls: C, description: str = "", example: str = "", *, override: bool = False) -> C: ...


def register_encoder(kind: str, cls: Optional[C] = None, description: str = "", example: str = "", *,
                     override: bool = False) -> Union[C, Callable[[C], C]]:
    """Register an encoder class under `kind`; call it directly or use it as a class decorator.

    `description` defaults to the first line of the class docstring; `example` is a spec such as
    ``"my-kind:some-name"``. Registering the same class again is a no-op; another class under a taken
    kind raises `DuplicateNameError` (a ValueError) unless `override`.
    """
    key = ENCODERS.key(kind)
    if example and not example.lower().startswith(key + ":"):
        raise ValueError(f"register_encoder({kind!r}): example {example!r} must start with '{key}:'")

    def add(klass: C) -> C:
        return ENCODERS.register(key, klass, override=override, description=description or first_doc_line(klass),
                                 example=example)

    return add if cls is None else add(cls)


def known_kinds() -> list[str]:
    """Registered kinds, in registration order."""
    return ENCODERS.list()


def is_registered(kind: object) -> bool:
    """True when `kind` names a registered encoder kind."""
    return ENCODERS.is_registered(kind)


def get_encoder_class(kind: str) -> type:
    """The class registered under `kind`; `UnknownEncoderError` (an `EncoderError`) naming the known kinds."""
    return ENCODERS.get(kind)


def list_encoders(pattern: str = "*") -> list[EncoderInfo]:
    """The encoder kinds matching `pattern`, with a description and an example spec: built-ins first."""
    return [EncoderInfo(e.name, e.info["description"], e.info["example"]) for e in ENCODERS.entries(pattern)]
