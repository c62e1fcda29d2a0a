"""One split of paired data: table rows, validated once, yielding raw samples for the collate function.

Every row is checked when the split is built: cells are decoded (each distinct file once, however many
rows share it), labels encoded. A bad row raises `BadSampleError` naming the source, row and field; with
``on_bad_sample="skip"`` it is dropped and counted in `MultimodalDataset.skipped`. A missing value (empty
cell, None, NaN) for an optional modality is not an error: the sample gets ``present=False`` and the
encoder's preprocessor receives None (a neutral placeholder).

With ``validate=False`` files are not opened up front; a file that fails to load later follows the same
rule: ``"error"`` raises `BadSampleError` naming the row, ``"skip"`` returns a marker item
(``{"index", "skipped"}``) that the collate function leaves out, and records the row in `skip_log`, so
`skip_counts` covers rows skipped up front and while loading, in any process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from torch.utils.data import Dataset

from multimodal.data.labels import LabelVocab
from multimodal.data.manifest import DataError, cell, is_missing
from multimodal.data.media import (
    DEFAULT_LIMITS,
    FILE_MODALITIES,
    MediaLimits,
    cell_path,
    check_sample,
    describe,
    load_sample,
)
from multimodal.data.skiplog import SkipLog
from multimodal.progress import progress_bar

LABEL_TYPES = ("single_label", "multi_label", "regression")


class BadSampleError(DataError):
    """A row cannot be used: the message names the source, the row and the field or file."""

    def __init__(self, message: str, reason: str = "row") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class SkipCounts:
    """How many rows were skipped, by reason (e.g. ``"image": 2, "label": 1``)."""

    by_reason: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # row numbers as the messages give them (1-based)
    while_loading: int = 0  # of the total, rows found bad only when loaded (validate=False)

    @property
    def total(self) -> int:
        """All skipped rows."""
        return sum(self.by_reason.values())

    def add(self, reason: str, message: str, row: Optional[int] = None) -> None:
        """Count one skipped row (the first few messages and the first 1,000 row numbers are kept)."""
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        if len(self.examples) < 5:
            self.examples.append(message)
        if row is not None and len(self.rows) < 1000:
            self.rows.append(row)

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        return {"total": self.total, "by_reason": dict(self.by_reason), "examples": list(self.examples),
                "rows": list(self.rows), "while_loading": self.while_loading}


def _window_seed(idx: Any) -> Optional[int]:
    """The seed of a training item's audio window: its epoch seed and its index (None for other items)."""
    seed = getattr(idx, "seed", None)
    return None if seed is None else int(seed) * 1_000_003 + int(idx)


class MultimodalDataset(Dataset):
    """Rows of a table with `columns` (modality -> column) and an optional label column.

    `label_type` is one of single_label / multi_label / regression, or None for unlabelled data (e.g.
    retrieval pairs). Items are ``{"index": i, <modality>: raw sample or None, "label": encoded label}``.
    """

    def __init__(
        self,
        rows: Sequence[dict],
        columns: dict[str, str],
        label_column: Optional[str] = None,
        label_type: Optional[str] = "single_label",
        vocab: Optional[LabelVocab] = None,
        base_dir: Optional[str] = None,
        source: str = "<table>",
        on_bad_sample: str = "error",
        required_modalities: Sequence[str] = (),
        multi_label_separator: str = "|",
        validate: bool = True,
        row_ids: Optional[Sequence[int]] = None,
        progress: bool = True,
        limits: Optional[MediaLimits] = None,
    ) -> None:
        if on_bad_sample not in ("error", "skip"):
            raise ValueError(f"on_bad_sample must be 'error' or 'skip', got {on_bad_sample!r}")
        if label_type is not None and label_type not in LABEL_TYPES:
            raise ValueError(f"label_type must be one of {LABEL_TYPES} or None, got {label_type!r}")
        self.rows = rows
        self.columns = dict(sorted(columns.items()))
        self.label_column = label_column if label_type is not None else None
        self.label_type = label_type if self.label_column is not None else None
        self.base_dir = base_dir
        self.source = source
        self.on_bad_sample = on_bad_sample
        self.required = set(required_modalities)
        self.separator = multi_label_separator
        self.row_ids = list(row_ids) if row_ids is not None else list(range(len(rows)))
        self.limits = limits or DEFAULT_LIMITS  # what one sample may cost to decode (`multimodal.data.limits`)
        self.skipped = SkipCounts()  # rows skipped up front; `skip_counts` adds those skipped while loading
        self.skip_log = SkipLog()
        self._check_columns()
        raw_labels = [self._raw_label(i) for i in range(len(rows))] if self.has_labels else None
        if self.has_labels and vocab is None and self.label_type in ("single_label", "multi_label"):
            vocab = LabelVocab.from_labels([v for v in raw_labels if not is_missing(v)], self.label_type)
        self.vocab = vocab
        self._labels: list[Any] = [None] * len(rows)
        self._checked: dict[tuple[str, str], Optional[str]] = {}  # (modality, file) -> error text or None
        self.indices: list[int] = []
        iterator: Any = range(len(rows))
        if validate and progress and len(rows) > 200:
            iterator = progress_bar(iterator, desc=f"checking {os.path.basename(source)}")
        for i in iterator:
            try:
                self._validate_row(i, raw_labels[i] if raw_labels else None, check_files=validate)
            except BadSampleError as err:
                if self.on_bad_sample == "error":
                    raise
                self.skipped.add(err.reason, str(err), self.row_ids[i] + 1)
                continue
            self.indices.append(i)

    # -- table helpers ---------------------------------------------------------------------------
    @property
    def has_labels(self) -> bool:
        """Whether rows carry a label/target column."""
        return self.label_column is not None

    @property
    def modalities(self) -> list[str]:
        """Modalities read from this split (sorted)."""
        return list(self.columns)

    def _check_columns(self) -> None:
        if not len(self.rows):
            raise DataError(f"{self.source}: no rows")
        keys = set(self.rows[0].keys())
        wanted = {f"the {m} modality": c for m, c in self.columns.items()}
        if self.label_column is not None:
            wanted["the labels"] = self.label_column
        for what, column in wanted.items():
            if column not in keys:
                raise DataError(f"{self.source}: column {column!r} (for {what}) not found; columns are {sorted(keys)}")

    def where(self, i: int) -> str:
        """'<source>: row N (line M)' for table row position `i`."""
        row = self.row_ids[i] + 1
        line = f" (line {row + 1})" if self.source.lower().endswith((".csv", ".tsv")) else ""
        return f"{self.source}: row {row}{line}"

    def _bad(self, i: int, reason: str, message: str) -> BadSampleError:
        return BadSampleError(f"{self.where(i)}: {message}", reason)

    def _raw_label(self, i: int) -> Any:
        value = cell(self.rows[i][self.label_column])
        if self.label_type == "multi_label" and is_missing(value):
            return []  # an empty cell means no positive labels, as [] does in JSONL/Parquet
        if self.label_type == "multi_label" and isinstance(value, str):
            value = [v.strip() for v in value.split(self.separator) if v.strip()]
        return value

    def _encode_label(self, i: int, value: Any) -> Any:
        column = self.label_column
        if is_missing(value) and not (self.label_type == "multi_label" and isinstance(value, list)):
            raise self._bad(i, "label", f"label column {column!r} is empty")
        if self.label_type == "single_label":
            if value not in self.vocab:
                raise self._bad(i, "label", self.vocab.describe_unknown(value, column))
            return self.vocab.encode(value)
        if self.label_type == "multi_label":
            target = np.zeros(len(self.vocab), dtype=np.float32)
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if v not in self.vocab:
                    raise self._bad(i, "label", self.vocab.describe_unknown(v, column))
                target[self.vocab.encode(v)] = 1.0
            return target
        try:
            target = np.asarray(value if isinstance(value, (list, tuple)) else [value], dtype=np.float32)
        except (TypeError, ValueError):
            raise self._bad(i, "label", f"target {value!r} in column {column!r} is not a number") from None
        if not np.all(np.isfinite(target)):
            raise self._bad(i, "label", f"target {value!r} in column {column!r} is not finite")
        return target

    def _cell_error(self, modality: str, value: Any) -> Optional[str]:
        """Why the cell cannot be used, or None; each distinct file is opened once, however many rows share it."""
        path = cell_path(value, self.base_dir) if modality in FILE_MODALITIES else None
        key = (modality, path) if path is not None else None
        if key is not None and key in self._checked:
            return self._checked[key]
        try:
            check_sample(modality, value, self.base_dir, self.limits)
            error = None
        except Exception as err:  # noqa: BLE001 - any failure to read the cell makes its rows bad
            error = f"{type(err).__name__}: {err}"
        if key is not None:
            self._checked[key] = error
        return error

    def _validate_row(self, i: int, raw_label: Any, check_files: bool) -> None:
        row = self.rows[i]
        present = 0
        for modality, column in self.columns.items():
            value = cell(row[column])
            if is_missing(value):
                if modality in self.required:
                    raise self._bad(i, modality, f"{modality} column {column!r} is empty but {modality} is required")
                continue
            present += 1
            if not check_files:
                continue
            error = self._cell_error(modality, value)
            if error is not None:
                raise self._bad(i, modality, f"{modality} column {column!r}{describe(value, self.base_dir)}: {error}")
        if present == 0:
            raise self._bad(i, "empty", f"no modality present (columns {list(self.columns.values())})")
        if self.has_labels:
            self._labels[i] = self._encode_label(i, raw_label)

    # -- access ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.indices)

    def labels(self) -> np.ndarray:
        """Encoded labels of the kept rows, in dataset order."""
        return np.stack([np.asarray(self._labels[i]) for i in self.indices]) if self.indices else np.zeros(0)

    def row(self, idx: int) -> dict:
        """The table row of dataset item `idx`."""
        return self.rows[self.indices[idx]]

    def value(self, idx: int, column: str) -> Any:
        """One cell of dataset item `idx` (None when missing)."""
        value = cell(self.row(idx).get(column))
        return None if is_missing(value) else value

    def source_of(self, idx: int, modality: str) -> Any:
        """The un-decoded sample of one modality: an absolute path, a text, a raw cell, or None when missing."""
        value = self.value(idx, self.columns[modality])
        if value is None:
            return None
        path = cell_path(value, self.base_dir) if modality in FILE_MODALITIES else None
        if path is not None:
            return path
        return str(value) if modality == "text" else value

    def __getitem__(self, idx: int) -> dict:
        i = self.indices[idx]
        row = self.rows[i]
        item: dict[str, Any] = {"index": int(idx)}
        if getattr(idx, "seed", None) is not None:
            item["aug_seed"] = idx.seed
        for modality, column in self.columns.items():
            value = cell(row[column])
            if is_missing(value):
                item[modality] = None
                continue
            try:
                item[modality] = load_sample(modality, value, self.base_dir, self.limits, _window_seed(idx))
            except Exception as err:  # noqa: BLE001
                bad = BadSampleError(
                    f"{self.where(i)}: {modality} column {column!r}{describe(value, self.base_dir)}: "
                    f"{type(err).__name__}: {err}", modality
                )
                if self.on_bad_sample == "error":
                    raise bad from err
                self.skip_log.add(i, modality, str(bad))
                return {"index": int(idx), "skipped": str(bad)}  # the collate function leaves it out
        if self.has_labels:
            item["label"] = self._labels[i]
        return item

    def load_source(self, modality: str, source: Any) -> Any:
        """Decode one `source_of` value with this dataset's limits (the feature cache's loader)."""
        return load_sample(modality, source, self.base_dir, self.limits)

    def set_audio_window(self, seconds: Optional[float]) -> None:
        """Decode at most `seconds` of each audio file: the clip the model's preprocessor keeps (training items,
        which carry an epoch seed, at a seeded random offset; others from the start)."""
        self.limits = self.limits.with_window(seconds)

    def set_image_draft(self, side: Optional[int]) -> None:
        """Decode JPEGs at reduced scale while the shorter side stays at least `side` pixels (None: full size); for
        datasets preprocessed in eval mode (`multimodal.data.media.apply_image_draft`)."""
        self.limits = self.limits.with_draft(side)

    # -- skips found after the up-front checks ---------------------------------------------------------------
    def discard(self, bad: dict[int, tuple[str, str]]) -> None:
        """Drop dataset items found bad after the up-front checks (e.g. by the feature cache): `bad` maps an
        item to (reason, message). With on_bad_sample="error" the first raises `BadSampleError` naming its row."""
        for idx in sorted(bad):
            reason, message = bad[idx]
            err = self._bad(self.indices[idx], reason, message)
            if self.on_bad_sample == "error":
                raise err
            self.skipped.add(reason, str(err), self.row_ids[self.indices[idx]] + 1)
        self.indices = [i for k, i in enumerate(self.indices) if k not in bad]

    def skipped_while_loading(self) -> set[int]:
        """Table positions of the rows skipped when they were loaded (in any process that reported them)."""
        return {int(r["row"]) for r in self.skip_log.records()}

    def skip_counts(self) -> SkipCounts:
        """Rows skipped up front plus those skipped while loading, each row once."""
        counts = SkipCounts(dict(self.skipped.by_reason), list(self.skipped.examples), list(self.skipped.rows))
        for rec in self.skip_log.records():
            counts.add(rec["reason"], rec["message"], self.row_ids[int(rec["row"])] + 1)
            counts.while_loading += 1
        return counts
