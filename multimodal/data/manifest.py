"""Tables of paired data: CSV / TSV / JSONL / JSON / Parquet manifests, missing values, split names."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}
SPLITS = ("train", "validation", "test")


class DataError(ValueError):
    """A table cannot be used as given (missing column, no rows, too few classes); the message names it."""


def read_manifest(path: str) -> list[dict]:
    """Read a CSV, TSV, JSONL/JSON-lines, JSON or Parquet manifest into a list of row dicts."""
    import pandas as pd

    if not os.path.exists(path):
        raise DataError(f"manifest {path!r} does not exist")
    if os.path.isdir(path):
        raise DataError(f"manifest {path!r} is a folder, not a table file")
    lower = path.lower()
    if not lower.endswith((".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".parquet", ".pq")):
        raise DataError(f"manifest {path!r}: unsupported extension (use .csv, .tsv, .jsonl, .json or .parquet)")
    try:
        if lower.endswith((".csv", ".tsv")):
            # Only empty cells are missing: "NA", "None", "null" or "nan" are real text/labels, not NaN.
            frame = pd.read_csv(
                path, sep="\t" if lower.endswith(".tsv") else ",", keep_default_na=False, na_values=[""], dtype=object
            )
        elif lower.endswith((".jsonl", ".ndjson", ".json")):
            frame = pd.read_json(path, lines=not lower.endswith(".json") or _looks_like_jsonl(path), dtype=False)
        else:
            frame = pd.read_parquet(path)
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"manifest {path!r} cannot be read: {type(err).__name__}: {str(err)[:300]}") from err
    return frame.to_dict("records")


def _looks_like_jsonl(path: str) -> bool:
    with open(path, encoding="utf-8") as f:
        first = f.readline().strip()
    return first.startswith("{")


def is_missing(value: Any) -> bool:
    """True for None, NaN, empty/whitespace strings and empty lists (a modality or label not given)."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and not value.strip():
        return True
    if isinstance(value, (list, tuple)) and len(value) == 0:
        return True
    return False


def cell(value: Any) -> Any:
    """A table cell as a plain Python value (object arrays from Parquet/JSON become lists)."""
    if isinstance(value, np.ndarray) and value.dtype == object:
        return list(value)
    return value


def split_name(name: Any, where: str) -> str:
    """'train' / 'validation' / 'test' for a split name or alias; the error says `where` it came from."""
    key = SPLIT_ALIASES.get(str(name).strip().lower())
    if key is None:
        raise DataError(f"{where}: unknown split name {name!r} (use train/validation/test)")
    return key
