"""Which unit (a row, or a group of rows) goes where: held-out splits, cross-validation folds, K-shot samples.

Pure functions of labels, groups and a seed (numpy and scikit-learn; no datasets), so the demos' generators
and `multimodal.data.splits` share them.

* `assign_splits`: train / validation / test. Hand-written, because scikit-learn's ``train_test_split(stratify=)``
  refuses what real tables hold: a class with one row (it stays in train here), and a held-out split smaller
  than the number of classes (allotted by largest remainder here). Every class also keeps a unit in train.
* `assign_folds`: scikit-learn's ``StratifiedKFold`` (single-label), ``KFold`` (otherwise), and with groups
  ``StratifiedGroupKFold`` / ``GroupKFold``, all shuffled with the seed. Fold sizes differ by at most one unit
  (per class too, for ``StratifiedKFold``); where no class has K units, the folds are not stratified.
* `leave_one_group_out`: scikit-learn's ``LeaveOneGroupOut``, folds in natural order of the values.
* `pick_shots`: K seeded units per class.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
from sklearn.model_selection import GroupKFold, KFold, LeaveOneGroupOut, StratifiedGroupKFold, StratifiedKFold

from multimodal.data.dataset import DataError


def _allocate(total: int, sizes: list[int], caps: list[int]) -> list[int]:
    """Split `total` over classes in proportion to `sizes` (largest remainder), never above `caps`."""
    whole = sum(sizes)
    ideal = [total * s / whole if whole else 0.0 for s in sizes]
    alloc = [min(int(math.floor(x)), c) for x, c in zip(ideal, caps)]
    order = sorted(range(len(sizes)), key=lambda k: (-(ideal[k] - math.floor(ideal[k])), k))
    left = total - sum(alloc)
    while left > 0:
        room = [k for k in order if alloc[k] < caps[k]]
        if not room:
            break
        for k in room[:left]:
            alloc[k] += 1
        left = total - sum(alloc)
    return alloc


def _wanted(n: int, val_fraction: float, test_fraction: float, at_least_one: bool) -> dict[str, int]:
    """Units per held-out split: ``round(n * fraction)``; with `at_least_one`, 1 for a fraction > 0 that rounds
    to 0 while train keeps at least one unit."""
    want = {"test": int(round(n * test_fraction)), "validation": int(round(n * val_fraction))}
    for split, fraction in (("validation", val_fraction), ("test", test_fraction)):
        if at_least_one and fraction > 0 and want[split] == 0 and n - sum(want.values()) > 1:
            want[split] = 1
    return want


def assign_splits(
    n: int,
    labels: Optional[Sequence[Any]] = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    at_least_one: bool = False,
) -> tuple[list[str], list[str]]:
    """Assign each of `n` units (rows or groups) to train/validation/test; returns (assignment, notes).

    With `labels`, units are stratified by class and every class keeps at least one unit in train (a class
    with a single unit stays in train only); without, a seeded permutation. Held-out sizes are
    ``round(n * fraction)`` (at least 1 with `at_least_one`, see `_wanted`) unless classes are too small to give
    that many.
    """
    want = _wanted(n, val_fraction, test_fraction, at_least_one)
    if n - want["test"] - want["validation"] < 1:
        raise DataError(f"cannot split {n} rows/groups with val_fraction={val_fraction}, test_fraction={test_fraction}")
    rng = np.random.default_rng(seed)
    out = ["train"] * n
    if labels is None:
        perm = rng.permutation(n).tolist()
        for pos, unit in enumerate(perm[: want["test"] + want["validation"]]):
            out[unit] = "test" if pos < want["test"] else "validation"
        return out, []
    by_class: dict[str, list[int]] = {}
    for unit, label in enumerate(labels):
        by_class.setdefault(str(label), []).append(unit)
    names = sorted(by_class)
    sizes = [len(by_class[c]) for c in names]
    caps = [s - 1 for s in sizes]  # at least one unit of every class stays in train
    taken, notes = {}, []
    for split in ("test", "validation"):
        taken[split] = _allocate(want[split], sizes, caps)
        caps = [c - t for c, t in zip(caps, taken[split])]
        if sum(taken[split]) < want[split]:
            notes.append(f"{split}: {sum(taken[split])} rows/groups instead of {want[split]}: the classes are too small "
                         "to give more while keeping one of each class in train")
    for k, c in enumerate(names):
        units = [by_class[c][j] for j in rng.permutation(sizes[k])]
        n_test, n_val = taken["test"][k], taken["validation"][k]
        for unit in units[:n_test]:
            out[unit] = "test"
        for unit in units[n_test : n_test + n_val]:
            out[unit] = "validation"
    single = [c for c, s in zip(names, sizes) if s == 1]
    if single and (want["test"] or want["validation"]):
        notes.append(f"{len(single)} classes have one row/group and stay in train only: {single[:10]}")
    notes.append(f"stratified by label over {len(names)} classes")
    return out, notes


def fold_splitter(k: int, seed: int, labels: Optional[Sequence[Any]], groups: Optional[Sequence[Any]]) -> Any:
    """The scikit-learn splitter `assign_folds` uses: stratified when some class has K units, grouped with `groups`."""
    stratify = labels is not None and max(Counter(map(str, labels)).values(), default=0) >= k
    if groups is None:
        return (StratifiedKFold if stratify else KFold)(k, shuffle=True, random_state=seed)
    return (StratifiedGroupKFold if stratify else GroupKFold)(k, shuffle=True, random_state=seed)


def assign_folds(n: int, labels: Optional[Sequence[Any]] = None, k: int = 5, seed: int = 0,
                 groups: Optional[Sequence[Any]] = None) -> list[int]:
    """Fold number (0..k-1) of each of `n` units, stratified by `labels` when given (see module docstring);
    with `groups` (one per unit), units sharing a group share a fold."""
    n_units = n if groups is None else len(set(map(str, groups)))
    if n_units < k:
        raise DataError(f"cannot make {k} folds out of {n_units} rows/groups")
    y = None if labels is None else np.asarray([str(v) for v in labels])
    g = None if groups is None else np.asarray([str(v) for v in groups])
    out = [0] * n
    with warnings.catch_warnings():  # a class with fewer than K units misses some folds: expected, not a fault
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        for fold, (_, test) in enumerate(fold_splitter(k, seed, y, g).split(np.zeros((n, 1)), y, g)):
            for i in test:
                out[int(i)] = fold
    return out


def _natural(values: list[str]) -> list[str]:
    """`values` sorted as numbers (2 before 10) when they all are, else as text."""
    try:
        return sorted(values, key=lambda v: (float(v), v))
    except ValueError:
        return sorted(values)


def leave_one_group_out(values: Sequence[Any]) -> list[tuple[str, list[int]]]:
    """(value, positions) for each distinct value: one fold per value, in natural order of the values."""
    groups = np.asarray([str(v) for v in values])
    if len(set(groups.tolist())) < 2:
        raise DataError(f"{len(set(groups.tolist()))} distinct value(s); cross-validation needs at least 2 folds")
    folds = {str(groups[test[0]]): test.tolist() for _, test in LeaveOneGroupOut().split(groups, groups=groups)}
    return [(value, folds[value]) for value in _natural(list(folds))]


def pick_shots(labels: Sequence[Any], k: int, seed: int = 0) -> tuple[list[int], list[Any]]:
    """Positions of K seeded units per class (all of a class with fewer), and the classes that had fewer."""
    rng = np.random.default_rng(seed)
    by_class: dict[Any, list[int]] = {}
    for unit, label in enumerate(labels):
        by_class.setdefault(label, []).append(unit)
    picked, short = [], []
    for label in sorted(by_class):
        members = by_class[label]
        picked.extend(members[i] for i in rng.permutation(len(members))[:k])
        if len(members) < k:
            short.append(label)
    return picked, short
