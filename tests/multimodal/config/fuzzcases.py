"""Seeded generators of config-loading fuzz cases: override lists and YAML documents, valid and hostile.

Used by `test_config_fuzz.py` and by `benchmarks/bad_inputs.py` (which runs more of them)."""

from __future__ import annotations

import random

import yaml

from multimodal.config import ExperimentConfig
from multimodal.config.checks import numeric_fields


def _keys(cls=ExperimentConfig, prefix: str = "") -> list[str]:
    import dataclasses
    import typing

    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.extend(_keys(hints[f.name], f"{prefix}{f.name}."))
        else:
            out.append(prefix + f.name)
    return out


KEYS = _keys()
NUMERIC = [k for k, _, _ in numeric_fields(ExperimentConfig)]
SCALARS = [
    "0", "1", "-1", "2", "3", "0.5", "-0.5", "1.5", "1e-3", "1e-400", "1e308", "1e999", ".nan", ".inf", "-.inf", "NaN",
    "4294967296", "-4294967297", "1" + "0" * 400, "-" + "9" * 500, "0x1F", "0o17", "1_000", "true", "false", "yes",
    "null", "~", "", " ", "''", '""', "auto", "latest", "none", "concat", "gated", "retrieval", "single_label",
    "text_image", "image_text_pairs", "text:x", "image:test_efficientnet", "kind:", ":", "=", "==", "a=b", "[", "]",
    "{", "}", "[1, 2", "{a: 1", "{a: 1}", "[1, 2]", "[]", "{}", "[[1]]", "[a, b, a]", "[1, 0]", "2020-13-45",
    "2020-01-01", "12:30:00", "!!binary aGVsbG8=", "!!binary ###", "!!int abc", "!!float x", "!!timestamp bad",
    "!!python/object/apply:os.system ['echo pwned']", "!!python/name:os.system", "!!set {a, b}", "!!omap [a: 1]",
    "&a [*a]", "*undefined", "&x 1", "%YAML 1.1", "--- 1", "... ", "a: b: c", "- a\n- b", "\t", "\x00", "caf\u00e9",
    "\ud83d\ude00", "\u202e", "../../etc/passwd", "/dev/null", "/tmp", "/nonexistent/file.csv", "~/x.csv",
    "a\x00b", "x" * 5000, "{train: {epochs: 3}}", "[{a: [{b: 1}]}]", "{1: 2}", "{null: 1}", "{[1]: 2}", "'{}'",
    "'a photo of a {}.'", "[a photo of a {}., b]", "{image: {img_size: 32}}", "{text: text:x, image: image:y}",
]


def _deep(rng: random.Random) -> str:
    n = rng.choice([40, 200, 1200, 4000])
    open_, close = rng.choice([("[", "]"), ("{a: ", "}"), ("[{a: ", "}]")])
    return open_ * n + "1" + close * n


def _bomb(rng: random.Random) -> str:
    levels, width = rng.randint(3, 9), rng.randint(3, 10)
    lines = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nmodel:\n  fusion_kwargs: {{big: *a{levels - 1}}}\n"


def _key(rng: random.Random) -> str:
    r = rng.random()
    key = rng.choice(NUMERIC if r < 0.35 else KEYS)
    if r > 0.9:  # mutations: typos, extra or missing parts, odd characters
        key = rng.choice([key[:-1], key + "s", key + ".x", key.split(".")[0], "." + key, key + ".", key.replace(".", ".."),
                          key.upper(), "x." + key, key + ".0", "\u00e9." + key, ""])
    return key


def _value(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.04:
        return _deep(rng)
    if r < 0.08:
        return "".join(chr(rng.randint(0, 0x2FF)) for _ in range(rng.randint(1, 30)))
    if r < 0.12:
        return repr(rng.uniform(-1e6, 1e6)) if rng.random() < 0.5 else str(rng.randint(-10**12, 10**12))
    return rng.choice(SCALARS)


def _in_range(rng: random.Random) -> str:
    """`key=value` with a value inside the key's range (so that many cases load and run every check)."""
    key, kind, allowed = rng.choice(numeric_fields(ExperimentConfig))
    low = allowed.low if allowed.low is not None else 0
    high = allowed.high if allowed.high is not None else low + 100
    value = rng.randint(int(low) + allowed.low_open, int(high) - allowed.high_open) if kind is int else (
        rng.uniform(low, high) if not allowed.high_open else rng.uniform(low, high) * 0.999)
    if kind is float and allowed.low_open and value == low:
        value = low + 1e-3
    return f"{key}=[{value}]" if key == "eval.recall_at" else f"{key}={value!r}"


def override_case(rng: random.Random) -> list[str]:
    """A list of 1-5 dotted overrides, some malformed."""
    if rng.random() < 0.25:
        return [_in_range(rng) for _ in range(rng.randint(1, 4))]
    out = []
    for _ in range(rng.randint(1, 5)):
        r = rng.random()
        if r < 0.05:
            out.append(_value(rng))  # no '='
        elif r < 0.08:
            out.append("=" + _value(rng))
        else:
            out.append(f"{_key(rng)}={_value(rng)}")
    return out


def _nested_doc(rng: random.Random) -> dict:
    doc: dict = {}
    for _ in range(rng.randint(1, 8)):
        parts = _key(rng).split(".")
        node = doc
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            text = _value(rng)
            shallow = text.count("[") + text.count("{") < 50  # deep values go in as text: PyYAML is slow on them
            try:
                node[parts[-1]] = yaml.safe_load(text) if shallow and rng.random() < 0.7 else text
            except Exception:  # noqa: BLE001 - values YAML cannot read go in as text
                node[parts[-1]] = text
    return doc


def yaml_case(rng: random.Random) -> bytes:
    """A YAML config file's bytes: a mutated valid document, raw text, a hostile construct, or binary noise."""
    r = rng.random()
    if r < 0.45:
        try:
            text = yaml.safe_dump(_nested_doc(rng), allow_unicode=True)
        except (yaml.YAMLError, RecursionError):  # a value too deep for the dumper itself
            text = "train: {}\n"
    elif r < 0.65:  # hand-written text, values pasted in raw (YAML syntax errors, tags, anchors)
        lines = []
        for _ in range(rng.randint(1, 6)):
            section, _, field = _key(rng).partition(".")
            lines.append(f"{section}:\n  {field or 'x'}: {_value(rng)}" if rng.random() < 0.7 else f"{section}: {_value(rng)}")
        text = "\n".join(lines) + "\n"
    elif r < 0.67:
        text = _bomb(rng)
    elif r < 0.78:
        text = "train: " + _deep(rng) + "\n"
    elif r < 0.86:
        text = rng.choice(["", "\n", "---\n", "[1, 2]\n", "42\n", "false\n", "null\n", "'text'\n", "a: 1\n---\nb: 2\n",
                           "!!python/object/apply:os.system ['echo pwned']\n", "train: &t {epochs: 2}\ndata: *t\n",
                           "? [a, b]\n: 1\n", "train:\n  epochs: 2\n  epochs: 3\n", "\ufefftrain: {epochs: 2}\n"])
    elif r < 0.93:
        return bytes(rng.randint(0, 255) for _ in range(rng.randint(1, 400)))
    else:
        try:
            text = yaml.safe_dump(_nested_doc(rng))
        except (yaml.YAMLError, RecursionError):
            text = "train: {epochs: 2}\n"
        raw = bytearray(text.encode())
        for _ in range(rng.randint(1, 5)):  # flipped bytes
            if raw:
                raw[rng.randrange(len(raw))] = rng.randint(0, 255)
        return bytes(raw)
    return text.encode("utf-8", "surrogatepass")


