"""The one table of encoder kinds: `register_encoder` adds to it, the factory functions read it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional, TypeVar, Union, overload

from encoders.base import EncoderError, EncoderInfo

T = TypeVar("T", bound=type)

# The class-level contract every registered kind follows (instances also need `get_config()`).
REQUIRED_METHODS = ("create", "from_config", "get_config")


@dataclass(frozen=True)
class _Entry:
    cls: type
    description: str
    example: str


# kind -> entry, in registration order (built-ins first: encoders.factory registers them on import).
_REGISTRY: dict[str, _Entry] = {}


def _key(kind: str) -> str:
    """The registry key for `kind`: stripped and lower-cased (specs are matched case-insensitively)."""
    return kind.strip().lower()


def _check_kind(kind: str) -> str:
    if not isinstance(kind, str):
        raise TypeError(f"encoder kind must be a string, got {type(kind).__name__}")
    key = _key(kind)
    if not key or ":" in key or any(c.isspace() for c in key):
        raise ValueError(f"encoder kind must be a non-empty name without ':' or spaces, got {kind!r}")
    return key


def _check_class(kind: str, cls: type) -> None:
    if not isinstance(cls, type):
        raise TypeError(f"register_encoder({kind!r}): expected a class, got {type(cls).__name__}")
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(cls, m, None))]
    if missing:
        raise TypeError(
            f"register_encoder({kind!r}): {cls.__qualname__} lacks {', '.join(missing)}; an encoder class needs "
            "classmethods create(name, pretrained=True, **kwargs) and from_config(config, assets_dir), and "
            "get_config() returning a dict with 'kind'"
        )


def _first_doc_line(cls: type) -> str:
    doc = (cls.__doc__ or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


@overload
def register_encoder(kind: str, cls: None = None, description: str = "", example: str = "") -> Callable[[T], T]: ...


@overload
def register_encoder(kind: str, cls: T, description: str = "", example: str = "") -> T: ...


def register_encoder(
    kind: str, cls: Optional[T] = None, description: str = "", example: str = ""
) -> Union[T, Callable[[T], T]]:
    """Register an encoder class under `kind`; call it directly or use it as a class decorator.

    `description` defaults to the first line of the class docstring; `example` is a spec such as
    ``"my-kind:some-name"``. Registering the same class again is a no-op; another class under a taken
    kind raises ValueError.
    """
    key = _check_kind(kind)
    if example and not example.lower().startswith(key + ":"):
        raise ValueError(f"register_encoder({kind!r}): example {example!r} must start with '{key}:'")

    def add(klass: T) -> T:
        _check_class(key, klass)
        existing = _REGISTRY.get(key)
        if existing is not None:
            if existing.cls is klass:
                return klass
            raise ValueError(
                f"encoder kind {key!r} is already registered to {existing.cls.__module__}."
                f"{existing.cls.__qualname__}; cannot register {klass.__module__}.{klass.__qualname__} "
                "under it too (pick another kind name)"
            )
        _REGISTRY[key] = _Entry(klass, description or _first_doc_line(klass), example)
        return klass

    if cls is None:
        return add
    return add(cls)


def known_kinds() -> list[str]:
    """Registered kinds, in registration order."""
    return list(_REGISTRY)


def is_registered(kind: object) -> bool:
    """True when `kind` names a registered encoder kind."""
    return isinstance(kind, str) and _key(kind) in _REGISTRY


def get_encoder_class(kind: str) -> type:
    """The class registered under `kind`; EncoderError (listing the known kinds) if there is none."""
    if not is_registered(kind):
        raise EncoderError(f"unknown encoder kind {kind!r}; known kinds: {known_kinds()}")
    return _REGISTRY[_key(kind)].cls


def list_encoders() -> list[EncoderInfo]:
    """The encoder kinds with a description and an example spec: built-ins first, then user kinds."""
    return [EncoderInfo(kind, entry.description, entry.example) for kind, entry in _REGISTRY.items()]
