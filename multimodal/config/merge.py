"""Merging nested config dicts: a later layer (YAML file, overrides, a search space's sample) over an earlier one.

A mapping merges key by key into the mapping below it, except a `Replace` mapping (what a ``key={...}``
override on the command line gives), which takes the place of the mapping below it whole.
"""

from __future__ import annotations


class Replace(dict):
    """A mapping that replaces, rather than merges into, the mapping it lands on (``model.encoders={image: ...}``)."""


def deep_merge(base: dict, extra: dict) -> dict:
    """`base` updated by `extra`, recursing into nested dicts unless `extra`'s is a `Replace` (neither input is
    modified)."""
    out = Replace(base) if isinstance(base, Replace) else dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and not isinstance(value, Replace) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
