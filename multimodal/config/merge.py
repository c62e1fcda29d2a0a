"""Merging nested config dicts: a later layer (YAML file, overrides, a search space's sample) over an earlier one."""

from __future__ import annotations


def deep_merge(base: dict, extra: dict) -> dict:
    """`base` updated by `extra`, recursing into nested dicts (neither input is modified)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
