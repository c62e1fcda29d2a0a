"""The fusion registry (an `encoders.registry.Registry`): one factory (`create_fusion`) and a listing (`list_fusions`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional, TypeVar, Union, overload

from encoders.registry import Registry, UnknownNameError, first_doc_line

from .base import Fusion

F = TypeVar("F", bound=type[Fusion])


class UnknownFusionError(UnknownNameError, ValueError):
    """A fusion name that is not registered (also a ValueError, which callers caught before)."""


def _check_fusion_class(name: str, cls: object) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Fusion)):
        raise TypeError(f"register_fusion({name!r}): {cls!r} is not a subclass of fusion.Fusion")


FUSIONS: Registry[type[Fusion]] = Registry("fusion", validate=_check_fusion_class, error=UnknownFusionError)


@dataclass(frozen=True)
class FusionInfo:
    """One row of `list_fusions()`."""

    name: str
    description: str
    requires_tokens: bool


@overload
def register_fusion(name: str, description: str = "", cls: None = None, *, override: bool = False,
                    hidden: bool = False) -> Callable[[F], F]: ...


@overload
def register_fusion(name: str, description: str = "", cls: F = ..., *, override: bool = False,
                    hidden: bool = False) -> F: ...


def register_fusion(name: str, description: str = "", cls: Optional[F] = None, *, override: bool = False,
                    hidden: bool = False) -> Union[F, Callable[[F], F]]:
    """Add a `Fusion` subclass under `name` (user fusions too): a class decorator, or a call with `cls`.

    Registering is what `create_fusion`, the config checks and `from_pretrained` look up, so a model built
    with a user fusion reloads once the module that registers it has been imported. A class registered under
    several names saves itself under the first (`Fusion.name`). `hidden` keeps an internal fusion out of
    `list_fusions()` (and so out of configs) while saved models that name it still load.
    """

    if isinstance(description, type):  # register_fusion("name", MyFusion), as register_encoder / register_task
        cls, description = description, ""

    def add(klass: F) -> F:
        FUSIONS.register(name, klass, override=override, hidden=hidden,
                         description=description or first_doc_line(klass))
        own = vars(klass).get("name")
        if not (own and FUSIONS.is_registered(own) and FUSIONS.get(own) is klass):
            klass.name = name  # the first name is the one its configs are saved under
        return klass

    return add if cls is None else add(cls)


def list_fusions(pattern: str = "*") -> list[FusionInfo]:
    """Every public fusion matching `pattern`: name, one-line description, whether it needs token sequences."""
    return [FusionInfo(e.name, e.info["description"], bool(e.obj.requires_tokens))
            for e in sorted(FUSIONS.entries(pattern), key=lambda e: e.name)]


def get_fusion_class(name: str) -> type[Fusion]:
    """The class registered under `name`; `UnknownFusionError` (a ValueError and KeyError) naming the valid ones."""
    return FUSIONS.get(name)


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
