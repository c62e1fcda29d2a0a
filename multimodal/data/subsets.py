"""Subsets of a validated dataset without re-reading it: K-shot training sets and cross-validation folds.

* `take_shots(dataset, k, seed)`: K seeded rows per class (K groups per class when a group column keeps rows
  together; a class with fewer keeps all of them). The label vocabulary is unchanged, so a K-shot model
  still has one output per class. `apply_shots` does it for the training split and cuts the validation
  split to at most K per class too, so model selection sees no more labels than training.
* `assign_folds(n, labels, k, seed)`: each unit (row or group) to one of K folds, stratified by class: the
  units of every class are shuffled and dealt round-robin, continuing where the previous class stopped, so
  fold sizes differ by at most one and so do the per-class counts.
* `fold_units(...)`: the folds of a dataset for ``data.folds: K``, ``data.folds: groups`` (leave one group
  out) or ``data.fold_column``.

A subset shares the rows, the checks and the encoded labels of its parent (`subset`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from multimodal.data.dataset import DataError, MultimodalDataset


def subset(dataset: MultimodalDataset, positions: Sequence[int]) -> MultimodalDataset:
    """The items at `positions` of `dataset` (same rows, vocabulary and source), as a dataset of its own class."""
    out = copy.copy(dataset)
    out.indices = [dataset.indices[p] for p in positions]
    return out


def units_of(dataset: MultimodalDataset, group_column: Optional[str]) -> list[list[int]]:
    """Dataset positions grouped by `group_column` (first-seen order), or one unit per position."""
    if not group_column:
        return [[p] for p in range(len(dataset))]
    if len(dataset) and group_column not in dataset.row(0):
        raise DataError(f"{dataset.source}: group column {group_column!r} not found")
    groups: dict[str, list[int]] = {}
    for p in range(len(dataset)):
        groups.setdefault(str(dataset.value(p, group_column)), []).append(p)
    return list(groups.values())


def _unit_labels(dataset: MultimodalDataset, units: list[list[int]]) -> Optional[list[int]]:
    """The single-label class of each unit (its first row's), or None when the data is not single-label."""
    if dataset.label_type != "single_label":
        return None
    labels = dataset.labels()
    return [int(labels[u[0]]) for u in units]


def take_shots(dataset: MultimodalDataset, k: int, seed: int = 0,
               group_column: Optional[str] = None) -> tuple[MultimodalDataset, str]:
    """K seeded rows (or `group_column` groups) per class of a single-label dataset; returns it and a note."""
    if dataset.label_type != "single_label":
        raise DataError(f"data.shots_per_class samples rows per class of a single-label task; {dataset.source} has "
                        f"{dataset.label_type or 'no'} labels")
    units = units_of(dataset, group_column)
    labels = _unit_labels(dataset, units)
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for u, label in enumerate(labels):
        by_class.setdefault(label, []).append(u)
    picked: list[int] = []
    short = []
    for label in sorted(by_class):
        members = by_class[label]
        chosen = [members[i] for i in rng.permutation(len(members))[:k]]
        if len(members) < k:
            short.append(dataset.vocab.names[label] if dataset.vocab is not None else str(label))
        picked.extend(p for u in chosen for p in units[u])
    what = f"{group_column!r} groups" if group_column else "rows"
    note = f"train: {k} {what} per class (data.shots_per_class, seed {seed}), {len(picked)} rows"
    if short:
        note += f"; fewer than {k} available for {short[:10]}"
    return subset(dataset, sorted(picked)), note


def apply_shots(splits: Any, k: int, seed: int = 0, group_column: Optional[str] = None) -> Any:
    """K shots per class in train, and at most K per class in validation (so model selection uses no more
    labels than training); the test split is untouched. Modifies and returns the `DataSplits`."""
    splits.train, note = take_shots(splits.train, k, seed, group_column)
    splits.notes.append(note)
    if splits.validation is not None:
        splits.validation, note = take_shots(splits.validation, k, seed + 1, group_column)
        splits.notes.append(note.replace("train:", "validation:", 1))
    return splits


def assign_folds(n: int, labels: Optional[Sequence[Any]] = None, k: int = 5, seed: int = 0) -> list[int]:
    """Fold number (0..k-1) of each of `n` units, stratified by `labels` when given (see module docstring)."""
    if n < k:
        raise DataError(f"cannot make {k} folds out of {n} rows/groups")
    rng = np.random.default_rng(seed)
    out = [0] * n
    classes: dict[str, list[int]] = {}
    for unit, label in enumerate(labels if labels is not None else [0] * n):
        classes.setdefault(str(label), []).append(unit)
    slot = 0
    for name in sorted(classes):
        members = classes[name]
        for j in rng.permutation(len(members)):
            out[members[j]] = slot % k
            slot += 1
    return out


def _natural(values: list[str]) -> list[str]:
    try:
        return sorted(values, key=lambda v: (float(v), v))
    except ValueError:
        return sorted(values)


def fold_units(dataset: MultimodalDataset, folds: Any = None, fold_column: Optional[str] = None,
               group_column: Optional[str] = None, seed: int = 0) -> tuple[list[tuple[str, list[int]]], str]:
    """The test positions of every fold, named, and a description of the scheme.

    ``folds=K``: stratified K-fold over units (`group_column` groups stay whole); ``folds="groups"``: one fold
    per `group_column` value; `fold_column`: one fold per distinct value of that column.
    """
    if fold_column or folds == "groups":
        column = fold_column or group_column
        if len(dataset) and column not in dataset.row(0):
            raise DataError(f"{dataset.source}: {'fold' if fold_column else 'group'} column {column!r} not found")
        by_value: dict[str, list[int]] = {}
        for p in range(len(dataset)):
            value = dataset.value(p, column)
            if value is None:
                raise DataError(f"{dataset.where(dataset.indices[p])}: {'fold' if fold_column else 'group'} column "
                                f"{column!r} is empty")
            by_value.setdefault(str(value), []).append(p)
        if len(by_value) < 2:
            raise DataError(f"{dataset.source}: column {column!r} has {len(by_value)} distinct value(s); "
                            "cross-validation needs at least 2 folds")
        how = f"one fold per value of {column!r}" if fold_column else f"leave one {column!r} group out"
        return [(f"{column}={v}", by_value[v]) for v in _natural(list(by_value))], how
    units = units_of(dataset, group_column)
    labels = _unit_labels(dataset, units)
    assignment = assign_folds(len(units), labels, int(folds), seed)
    named = [(f"fold-{f + 1}", sorted(p for u, a in zip(units, assignment) if a == f for p in u)) for f in range(int(folds))]
    how = f"{folds}-fold, seed {seed}" + (", stratified by label" if labels is not None else "") + (
        f", {group_column!r} groups kept whole" if group_column else "")
    return named, how
