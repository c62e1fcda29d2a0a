"""Loading configs: YAML files plus dotted ``key=value`` overrides, typed and checked, in layers.

``load_config(path, overrides)`` reads YAML, applies overrides such as ``train.epochs=3`` or
``model.fusion=gated`` (values parsed with YAML typing, so ``3`` is an int, ``[1,5]`` a list and
``null`` None), puts the chosen task's and demo's defaults underneath, builds the dataclass tree and
checks it (`multimodal.config.checks`): an unknown key gets a "did you mean" suggestion; a wrong type, an
invalid choice or a name missing from a registry (task, fusion, encoder kind, demo) names the key.

Other experiments extend the tree by subclassing: any dataclass works as ``cls`` in ``load_config``
and ``config_from_dict``, and ``dict``-typed fields accept free-form sub-keys
(``model.encoders.text=text:bert-base-uncased``). Such an entry set to ``null`` is removed
(``model.encoders.text=null`` drops the text tower), and a whole mapping given as an override
(``model.encoders='{image: "image:tf_efficientnet_lite0"}'``) replaces the YAML's mapping instead of merging into it.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from typing import Any, Literal, Optional, TypeVar, Union

import yaml

from multimodal.config.checks import check_config, type_hints
from multimodal.config.merge import Replace, deep_merge
from multimodal.config.method import apply_method
from multimodal.config.schema import ConfigError, ExperimentConfig, ModelConfig, short
from multimodal.data.demos import get_demo
from multimodal.files import write_text
from multimodal.registry import get_task

T = TypeVar("T")

MAX_DEPTH = 32  # nesting levels a config may have (the schema needs 4)
MAX_NODES = 100_000  # values in one config, counting each YAML alias expansion
MAX_FILE_BYTES = 10 * 2**20


# --------------------------------------------------------------------------------------------------
# Parsing and validation


def flow_depth(text: str) -> int:
    """How deeply ``[``/``{`` nest in `text` (a fast upper bound taken before YAML parses it: PyYAML's scanner
    slows down quadratically with flow nesting, so ``[[[...]]]`` thousands deep would stall a load)."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return 0
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}" and depth:
            depth -= 1
    return deepest


def parse_value(text: str) -> Any:
    """Parse one override value with YAML typing (``3`` -> int, ``null`` -> None, ``[a, b]`` -> list); text that
    is not YAML (``[a``, ``2020-13-45``) stays a string."""
    if flow_depth(text) > MAX_DEPTH:
        raise ConfigError(f"value {short(text)} is nested too deeply (more than {MAX_DEPTH} levels)")
    try:
        return yaml.safe_load(text) if text != "" else ""
    except RecursionError:
        raise ConfigError(f"value {short(text)} is nested too deeply") from None
    except Exception:  # noqa: BLE001 - any YAML failure (syntax, a bad date or tag): keep the text as given
        return text


def check_shape(values: Any, where: str) -> None:
    """Refuse a config nested deeper than `MAX_DEPTH` or holding more than `MAX_NODES` values (alias bombs)."""
    stack: list[tuple[Any, int, Any]] = [(v, 1, k) for k, v in values.items()] if isinstance(values, dict) else []
    count = len(stack)
    while stack:
        node, depth, top = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep (under {short(top)})")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, (list, tuple)) else ()
        for child in children:
            count += 1
            if isinstance(child, (dict, list, tuple)):
                stack.append((child, depth + 1, top))
        if count > MAX_NODES:
            raise ConfigError(f"{where}: more than {MAX_NODES} values (are YAML aliases expanding?)")


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["train.epochs=3", ...]`` into a nested dict; a mapping value (``model.encoders={image: ...}``) is a
    `Replace`: merged over a config, it replaces the mapping there instead of adding to it."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {short(item)} must look like key=value (e.g. train.epochs=3)")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {short(item)} has an empty key part")
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {short(item)} conflicts with an earlier override of {short(part)}")
            node = child
        try:
            parsed = parse_value(value)
        except ConfigError as err:
            raise ConfigError(f"override {short(key)}: {err}") from None
        node[parts[-1]] = Replace(parsed) if isinstance(parsed, dict) else parsed  # a mapping replaces, whole
    return nested


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return repr(tp).replace("typing.", "")
    return getattr(tp, "__name__", repr(tp))


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    """`value` as the first member of the union `tp` that takes it."""
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, key)
        except ConfigError as err:
            errors.append(err)
    if len(errors) == 1:
        raise errors[0]
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {short(value)}")


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    """`value` as a bool, int, float or str (int -> float is the one conversion), or raise naming `key`."""
    wrong = (tp is bool and not isinstance(value, bool)) or (tp is str and not isinstance(value, str)) or (
        tp is int and (isinstance(value, bool) or not isinstance(value, int)))
    if wrong:
        expected = {bool: "true/false", int: "an integer", str: "a string"}[tp]
        raise ConfigError(f"{key}: expected {expected}, got {type(value).__name__} {short(value)}")
    if tp is not float:
        return value
    if isinstance(value, str):  # PyYAML reads "3e-3" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {short(value)}")
    try:
        return float(value)
    except OverflowError:
        raise ConfigError(f"{key}: {short(value)} is too large for a number") from None


def _accepts_none(tp: Any) -> bool:
    return tp is Any or (typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against type `tp`, converting only where lossless (int -> float); raise naming `key`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _coerce_union(value, tp, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            hint = difflib.get_close_matches(short(value), [str(c) for c in choices], n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(
                f"{key}: invalid choice {short(value)}; choose one of {', '.join(map(repr, choices))}{extra}"
            )
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {short(value)}")
        return _build_dataclass(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {short(value)}")
        (item_tp,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {short(value)}")
        k_tp, v_tp = typing.get_args(tp) or (Any, Any)
        # null removes an entry (model.encoders.text=null drops the text tower) unless null is a value the entry takes
        keep = {k: v for k, v in value.items() if v is not None or _accepts_none(v_tp)}
        return {str(k): _coerce(v, v_tp, f"{key}.{k}") for k, v in keep.items()}
    if tp in (bool, int, float, str):
        return _coerce_scalar(value, tp, key)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {short(value)}")
    return value


_BOOL_KEYS = {True: ("on", "yes", "true", "y"), False: ("off", "no", "false", "n")}


def _build_dataclass(cls: type[T], values: dict, prefix: str = "") -> T:
    hints = type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if isinstance(key, bool):  # YAML 1.1 reads the keys on/off/yes/no as booleans (train.adversarial.on)
            key = next((n for n in _BOOL_KEYS[key] if n in names), key)
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            hint = difflib.get_close_matches(short(key), names, n=1, cutoff=0.5)
            extra = f"; did you mean {(prefix + '.' if prefix else '') + hint[0]!r}?" if hint else ""
            where = f"section {prefix!r}" if prefix else "the top level"
            raise ConfigError(f"unknown config key {short(full)} in {where}{extra} (valid: {', '.join(names)})")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def layered_defaults(values: dict) -> dict:
    """The defaults that the task and the demo selected in `values` set for themselves (demo over task), and
    ``train.freeze_norm_stats: false`` under ``model.pretrained: false``."""
    model = values.get("model") if isinstance(values.get("model"), dict) else {}
    data = values.get("data") if isinstance(values.get("data"), dict) else {}
    out: dict = {}
    task = model.get("task", ModelConfig.task)
    try:
        out = deep_merge(out, dict(getattr(get_task(str(task)), "config_defaults", {}) or {}))
    except KeyError:
        pass  # check_config reports the unknown task
    if data.get("demo"):
        try:
            out = deep_merge(out, dict(get_demo(str(data["demo"])).config_defaults))
        except KeyError:
            pass
    if model.get("pretrained") is False:  # random-init encoders: their initial BatchNorm statistics mean nothing
        out = deep_merge(out, {"train": {"freeze_norm_stats": False}})
    # Encoder options of the defaults apply only to the modalities the experiment has.
    encoders = model.get("encoders") if isinstance(model.get("encoders"), dict) else ModelConfig().encoders
    encoders = {m: spec for m, spec in encoders.items() if spec is not None}  # null: the tower is dropped
    kwargs = (out.get("model") or {}).get("encoder_kwargs")
    if isinstance(kwargs, dict):
        out["model"] = {**out["model"], "encoder_kwargs": {m: v for m, v in kwargs.items() if m in encoders}}
    return out


def config_from_dict(values: Optional[dict], cls: type[T] = ExperimentConfig, check: bool = True) -> T:
    """Build a config dataclass tree from a nested dict: task and demo defaults underneath, then checked."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping at the top level, got {type(values).__name__}")
    check_shape(values, "the config")
    values = deep_merge(layered_defaults(values), values)
    config = _build_dataclass(cls, values)
    if hasattr(config, "train") and hasattr(config, "model") and hasattr(config.train, "method"):
        apply_method(config)  # an explicit train.method sets its switches
    if check:
        check_config(config)
    return config


def config_to_dict(config: Any) -> dict:
    """The config as plain nested dicts/lists (what `save_config` writes)."""
    return dataclasses.asdict(config)


def read_config_file(path: str) -> dict:
    """The mapping in a YAML config file; every failure is a `ConfigError` naming the file."""
    if not os.path.exists(path):
        raise ConfigError(f"config file {short(path)} does not exist")
    if os.path.isdir(path):
        raise ConfigError(f"config file {short(path)} is a folder, not a YAML file")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"config file {short(path)} cannot be read: {err.strerror or err}") from None
    return parse_config_text(raw, f"config file {short(path)}")


def parse_config_text(raw: Union[bytes, str], source: str = "the config text") -> dict:
    """The mapping in a YAML document (bytes or text); every failure is a `ConfigError` naming `source`."""
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{source} is larger than {MAX_FILE_BYTES // 2**20} MiB: is it a YAML config?")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as err:
        raise ConfigError(f"{source} is not UTF-8 text (byte {err.start}): is it a YAML config?") from None
    if flow_depth(text) > MAX_DEPTH:
        raise ConfigError(f"{source} is nested too deeply (more than {MAX_DEPTH} levels of [ or {{)")
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source} is not valid YAML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{source} is nested too deeply") from None
    except Exception as err:  # noqa: BLE001 - PyYAML's constructors fail in their own ways (2020-13-45, !!timestamp x)
        raise ConfigError(f"{source} holds a value YAML cannot read: {err}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{source} must hold a mapping at the top level, got {type(values).__name__}")
    check_shape(values, source)
    return values


def load_config(
    path: Optional[str] = None, overrides: Optional[list[str]] = None, cls: type[T] = ExperimentConfig
) -> T:
    """Read a YAML config (or start from defaults when `path` is None), apply ``key=value`` overrides, check."""
    values: dict = read_config_file(path) if path is not None else {}
    return _with_overrides(values, overrides, cls)


def load_config_text(
    text: Union[bytes, str], overrides: Optional[list[str]] = None, cls: type[T] = ExperimentConfig,
    source: str = "the config text",
) -> T:
    """`load_config` for a YAML document held in memory (errors name `source`)."""
    return _with_overrides(parse_config_text(text, source), overrides, cls)


def _with_overrides(values: dict, overrides: Optional[list[str]], cls: type[T]) -> T:
    if overrides:
        values = deep_merge(values, parse_overrides(list(overrides)))
    return config_from_dict(values, cls)


def save_config(config: Any, path: str) -> None:
    """Write the resolved config as YAML (loadable again with `load_config`), atomically."""
    write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))


def parse_cli(
    argv: Optional[list[str]] = None, default_config: Optional[str] = None, cls: type[T] = ExperimentConfig
) -> T:
    """Recipe command line: ``[--config FILE] [key=value ...]``; without --config, `default_config` is used."""
    import argparse

    parser = argparse.ArgumentParser(description="Run a recipe from a YAML config with key=value overrides.")
    parser.add_argument("--config", default=None, help=f"YAML config (default: {default_config})")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3 model.fusion=gated")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of a user error (also MULTIMODAL_DEBUG=1)")
    args = parser.parse_args(argv)
    return load_config(args.config or default_config, args.overrides, cls)
