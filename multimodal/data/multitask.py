"""Several label columns on one dataset, for the multitask task: targets packed in one float vector per row.

Each target (``model.tasks.<name>``) reads its own column: single-label (one slot: the class index),
multi-label (one slot per class: 0/1) or regression (one slot per value). An empty cell means "no label for
this task in this row": its slots are NaN and the loss and metrics of that task skip the row. A value that
cannot be used (an unknown class, a non-number) is an error naming the row, the task and the column, or with
``data.on_bad_sample: skip`` drops the row (counted under ``label:<task>``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from multimodal.data.dataset import BadSampleError, DataError, MultimodalDataset
from multimodal.data.labels import LabelVocab
from multimodal.data.manifest import cell, is_missing

TARGET_KINDS = ("single_label", "multi_label", "regression")


@dataclass
class Target:
    """One task of a multi-task model: its column, label kind, loss weight and (for classes) vocabulary."""

    name: str
    column: str
    kind: str = "single_label"
    weight: float = 1.0
    labels: Optional[list[str]] = None  # class names in output order (single/multi-label)
    width: Optional[int] = None  # regression: values per row (None: from the first training value)
    separator: str = "|"
    vocab: Optional[LabelVocab] = field(default=None, repr=False)

    @property
    def num_outputs(self) -> int:
        """Width of this task's logits."""
        return len(self.vocab) if self.vocab is not None else (self.width or 1)

    @property
    def label_width(self) -> int:
        """Slots in the packed label vector: 1 for a class index, one per class or per value otherwise."""
        return 1 if self.kind == "single_label" else self.num_outputs

    def raw(self, value: Any) -> Any:
        """A cell as this task's raw label (None when missing)."""
        value = cell(value)
        if is_missing(value):
            return None
        if self.kind == "multi_label" and isinstance(value, str):
            return [v.strip() for v in value.split(self.separator) if v.strip()]
        return value

    def encode(self, value: Any) -> np.ndarray:
        """Slots for one raw label (NaN for None); ValueError saying what is wrong."""
        out = np.full(self.label_width, np.nan, dtype=np.float32)
        if value is None:
            return out
        if self.kind == "single_label":
            if value not in self.vocab:
                raise ValueError(f"unknown label {value!r} (known: {self.vocab.names})")
            out[0] = self.vocab.encode(value)
        elif self.kind == "multi_label":
            out[:] = 0.0
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if v not in self.vocab:
                    raise ValueError(f"unknown label {v!r} (known: {self.vocab.names})")
                out[self.vocab.encode(v)] = 1.0
        else:
            try:
                values = np.asarray(value if isinstance(value, (list, tuple)) else [value], dtype=np.float32)
            except (TypeError, ValueError):
                raise ValueError(f"target {value!r} is not a number") from None
            if values.shape != (self.num_outputs,) or not np.all(np.isfinite(values)):
                raise ValueError(f"target {value!r} must be {self.num_outputs} finite number(s)")
            out[:] = values
        return out

    def config(self) -> dict[str, Any]:
        """The ``model.tasks`` entry that rebuilds this target (with its class names fixed)."""
        return {"column": self.column, "task": self.kind, "weight": self.weight,
                **({"labels": list(self.vocab.names)} if self.vocab is not None else {"width": self.num_outputs})}


def fit_targets(targets: Sequence[Target], dataset: MultimodalDataset) -> None:
    """Class vocabularies (from the training rows, unless given) and regression widths of `targets`."""
    rows = [dataset.row(i) for i in range(len(dataset))]
    for t in targets:
        if rows and t.column not in rows[0]:
            raise DataError(f"{dataset.source}: column {t.column!r} (for task {t.name!r}) not found; columns are "
                            f"{sorted(rows[0])}")
        values = [v for v in (t.raw(r[t.column]) for r in rows) if v is not None]
        if t.kind == "regression":
            if t.width is None and values:
                first = values[0]
                t.width = len(first) if isinstance(first, (list, tuple)) else 1
            continue
        t.vocab = LabelVocab(t.labels, t.kind) if t.labels else LabelVocab.from_labels(values, t.kind)
        if t.kind == "single_label" and len(t.vocab) < 2:
            raise DataError(f"{dataset.source}: task {t.name!r} (column {t.column!r}) has {len(t.vocab)} class in the "
                            "training split; single-label tasks need at least 2")


class MultiTaskDataset(MultimodalDataset):
    """A `MultimodalDataset` whose items carry ``label``: every target's slots packed (NaN = no label)."""

    targets: list[Target]
    _packed: dict[int, np.ndarray]

    @classmethod
    def wrap(cls, base: MultimodalDataset, targets: Sequence[Target]) -> MultiTaskDataset:
        """`base` (rows checked, no labels) with the targets encoded; bad values raise or skip per `on_bad_sample`."""
        out = cls.__new__(cls)
        out.__dict__.update(base.__dict__)
        out.skipped = copy.deepcopy(base.skipped)
        out.targets = list(targets)
        out._packed = {}
        kept = []
        for i in base.indices:
            row = base.rows[i]
            try:
                parts = []
                for t in out.targets:
                    try:
                        parts.append(t.encode(t.raw(row[t.column])))
                    except ValueError as err:
                        raise BadSampleError(f"{base.where(i)}: task {t.name!r}, column {t.column!r}: {err}",
                                             f"label:{t.name}") from None
            except BadSampleError as err:
                if base.on_bad_sample == "error":
                    raise
                out.skipped.add(err.reason, str(err))
                continue
            out._packed[i] = np.concatenate(parts) if parts else np.zeros(0, np.float32)
            kept.append(i)
        out.indices = kept
        return out

    def labels(self) -> np.ndarray:
        """Packed targets of the kept rows, ``[N, sum of label widths]`` (NaN where a task has no label)."""
        width = sum(t.label_width for t in self.targets)
        return np.stack([self._packed[i] for i in self.indices]) if self.indices else np.zeros((0, width), np.float32)

    def __getitem__(self, idx: int) -> dict:
        item = super().__getitem__(idx)
        item["label"] = self._packed[self.indices[idx]]
        return item
