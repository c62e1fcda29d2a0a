"""The search space file of ``multimodal-tune``: dotted config keys -> distributions, checked before any trial.

::

    train.head_lr: {type: log, low: 1.0e-4, high: 1.0e-2}         # float on a log scale
    train.weight_decay: {type: float, low: 0.0, high: 0.1}
    model.fusion_dim: {type: int, low: 64, high: 512, step: 64}   # int; also `log: true`
    model.fusion: {type: categorical, choices: [concat, gated, late]}

Any config key works, also inside free-form mappings (``model.encoder_kwargs.image.img_size``). Every
distribution's extremes are applied to the base config and checked like ``key=value`` overrides, so an
unknown key, a wrong type or an invalid choice fails before the first trial, naming the file and the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from multimodal.config.loading import config_from_dict, parse_overrides, read_config_file
from multimodal.config.merge import deep_merge
from multimodal.config.schema import ConfigError

TYPES = ("float", "log", "int", "categorical")


@dataclass(frozen=True)
class Param:
    """One searched config key."""

    key: str
    type: str
    low: Optional[float] = None
    high: Optional[float] = None
    step: Optional[float] = None
    log: bool = False
    choices: Optional[tuple] = None

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial proposes for this key."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log or self.type == "log")

    def extremes(self) -> list[Any]:
        """Values that bound the distribution (checked against the config schema)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]


def _number(where: str, spec: dict, name: str) -> float:
    value = spec.get(name)
    if isinstance(value, str):
        try:
            value = float(value)  # PyYAML reads 1e-4 (no dot) as a string
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}.{name}: expected a number, got {spec.get(name)!r}")
    return float(value)


def parse_param(key: str, spec: Any, source: str) -> Param:
    """A `Param` from one entry of the space file; `ConfigError` naming `source` and the key otherwise."""
    where = f"{source}: {key}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping such as {{type: float, low: 0.0, high: 1.0}}, got {spec!r}")
    kind = spec.get("type")
    if kind not in TYPES:
        raise ConfigError(f"{where}.type: expected one of {', '.join(TYPES)}, got {kind!r}")
    allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "step", "log"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown} for type {kind} (valid: {', '.join(sorted(allowed))})")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}.choices: expected a non-empty list, got {choices!r}")
        bad = [c for c in choices if c is not None and not isinstance(c, (bool, int, float, str))]
        if bad:
            raise ConfigError(f"{where}.choices: Optuna choices must be scalars (null, true/false, numbers, strings); got {bad}")
        return Param(key, kind, choices=tuple(choices))
    low, high = _number(where, spec, "low"), _number(where, spec, "high")
    if not low < high:
        raise ConfigError(f"{where}: low ({low}) must be < high ({high})")
    log = bool(spec.get("log", False)) or kind == "log"
    if log and low <= 0:
        raise ConfigError(f"{where}: a log scale needs low > 0, got {low}")
    step = _number(where, spec, "step") if spec.get("step") is not None else None
    if step is not None and (step <= 0 or log):
        raise ConfigError(f"{where}.step: must be > 0 and cannot be combined with a log scale")
    if kind == "int" and (low != int(low) or high != int(high)):
        raise ConfigError(f"{where}: an int range needs integer low/high, got {low}, {high}")
    return Param(key, kind, low, high, step, log)


def nested(params: dict[str, Any]) -> dict:
    """``{"train.head_lr": 0.01}`` -> ``{"train": {"head_lr": 0.01}}``."""
    out: dict = {}
    for key, value in params.items():
        out = deep_merge(out, parse_overrides([f"{key}=x"]))  # same key splitting as overrides
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    return out


def read_space(path: str, base: dict) -> list[Param]:
    """The parameters of a space file, each checked against the `base` config values at its extremes."""
    values = read_config_file(path)
    if not values:
        raise ConfigError(f"search space {path!r} is empty: give dotted config keys with distributions")
    params = [parse_param(str(k), v, path) for k, v in values.items()]
    for p in params:
        for value in p.extremes():
            try:
                config_from_dict(deep_merge(base, nested({p.key: value})))
            except ConfigError as err:
                raise ConfigError(f"search space {path!r}, {p.key}={value!r}: {err}") from None
    return params
