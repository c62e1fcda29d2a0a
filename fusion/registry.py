"""The fusion registry: one factory (`create_fusion`) and a listing (`list_fusions`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .base import Fusion

_REGISTRY: dict[str, type[Fusion]] = {}
_DESCRIPTIONS: dict[str, str] = {}

F = TypeVar("F", bound=type[Fusion])


@dataclass(frozen=True)
class FusionInfo:
    """One row of `list_fusions()`."""

    name: str
    description: str
    requires_tokens: bool


def register_fusion(name: str, description: str = "") -> Callable[[F], F]:
    """Class decorator adding a `Fusion` subclass to the registry under `name` (user fusions too).

    Registering is what `create_fusion`, the config checks and `from_pretrained` look up, so a model built
    with a user fusion reloads once the module that registers it has been imported.
    """

    def decorator(cls: F) -> F:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"fusion name {name!r} is already registered to {_REGISTRY[name].__name__}")
        if not (isinstance(cls, type) and issubclass(cls, Fusion)):
            raise TypeError(f"register_fusion({name!r}): {cls!r} is not a subclass of fusion.Fusion")
        cls.name = name
        _REGISTRY[name] = cls
        _DESCRIPTIONS[name] = description or (cls.__doc__ or "").strip().split("\n")[0]
        return cls

    return decorator


def list_fusions() -> list[FusionInfo]:
    """Every registered fusion: name, one-line description, whether it needs token sequences."""
    return [
        FusionInfo(name, _DESCRIPTIONS[name], bool(cls.requires_tokens))
        for name, cls in sorted(_REGISTRY.items())
    ]


def get_fusion_class(name: str) -> type[Fusion]:
    """The class registered under `name`; the error lists the valid names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown fusion {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def create_fusion(name: str, input_dims: dict[str, int], output_dim: int, **kwargs: Any) -> Fusion:
    """Build the fusion registered as `name` for modalities of widths `input_dims`, producing `output_dim`."""
    cls = get_fusion_class(name)
    try:
        return cls(input_dims, output_dim, **kwargs)
    except TypeError as err:
        raise TypeError(f"create_fusion({name!r}): {err}") from err


def fusion_from_config(config: dict[str, Any]) -> Fusion:
    """Rebuild a fusion (fresh weights) from `Fusion.get_config()`."""
    for key in ("name", "input_dims", "output_dim"):
        if key not in config:
            raise KeyError(f"fusion config is missing {key!r}: {config}")
    return create_fusion(
        config["name"], config["input_dims"], config["output_dim"], **config.get("kwargs", {})
    )
