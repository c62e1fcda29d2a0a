"""One seeded function that assigns rows (or groups of rows) to train / validation / test."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

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


def assign_splits(
    n: int,
    labels: Optional[Sequence[Any]] = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> tuple[list[str], list[str]]:
    """Assign each of `n` units (rows or groups) to train/validation/test; returns (assignment, notes).

    With `labels`, units are stratified by class and every class keeps at least one unit in train (a class
    with a single unit stays in train only); without, a seeded permutation. Held-out sizes are
    ``round(n * fraction)`` unless classes are too small to give that many.
    """
    want = {"test": int(round(n * test_fraction)), "validation": int(round(n * val_fraction))}
    if n - want["test"] - want["validation"] < 1:
        raise DataError(f"cannot split {n} rows/groups with val_fraction={val_fraction}, test_fraction={test_fraction}")
    rng = np.random.default_rng(seed)
    out = ["train"] * n
    notes: list[str] = []
    if labels is None:
        perm = rng.permutation(n).tolist()
        for pos, unit in enumerate(perm[: want["test"] + want["validation"]]):
            out[unit] = "test" if pos < want["test"] else "validation"
        return out, notes
    by_class: dict[str, list[int]] = {}
    for unit, label in enumerate(labels):
        by_class.setdefault(str(label), []).append(unit)
    names = sorted(by_class)
    sizes = [len(by_class[c]) for c in names]
    caps = [s - 1 for s in sizes]  # at least one unit of every class stays in train
    taken = {}
    for split in ("test", "validation"):
        taken[split] = _allocate(want[split], sizes, caps)
        caps = [c - t for c, t in zip(caps, taken[split])]
        got = sum(taken[split])
        if got < want[split]:
            notes.append(f"{split}: {got} rows/groups instead of {want[split]}: the classes are too small to give more "
                         "while keeping one of each class in train")
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
