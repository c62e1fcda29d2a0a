"""The splits of an experiment: train / validation / test read where the data names them, carved otherwise;
cross-validation folds and K-shot subsets of a validated dataset.

Where the splits come from, in order: a built-in demo (its ``split`` column), a `datasets` DatasetDict's keys
or a single `datasets` table, the manifests ``data.train`` / ``data.validation`` / ``data.test``, and a split
column. A split the data does not name is carved out of the training rows by `assign_splits`: validation
whenever it is missing (``val_fraction``), test only when neither is given (``test_fraction``). Rows that
share ``group_column`` (retrieval: the item) stay together; single-label rows are stratified by class where
a class has enough rows, and every class keeps at least one row in train. What was done is recorded in
`DataSplits.notes`.

Subsets share the rows, the checks and the encoded labels of their parent (`subset`): `take_shots` /
`apply_shots` (``data.shots_per_class``: K seeded rows, or groups, per class; the vocabulary is unchanged),
`fold_units` (the test rows of every cross-validation fold: ``data.folds: K``, ``data.folds: groups`` or
``data.fold_column``) and `fold_splits` (one fold's train / validation / test). The assignments themselves,
on scikit-learn's splitters where they fit, are in `multimodal.data.partition`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from multimodal.data.dataset import DataError, MultimodalDataset
from multimodal.data.demos import make_demo
from multimodal.data.labels import LabelVocab
from multimodal.data.manifest import SPLITS, cell, is_missing, read_manifest, split_name
from multimodal.data.media import FILE_MODALITIES, MediaLimits, cell_path
from multimodal.data.partition import (
    assign_folds,
    assign_splits,
    fold_splitter,
    leave_one_group_out,
    pick_shots,
)
from multimodal.files import write_json, write_text


@dataclass
class DataSplits:
    """The train/validation/test datasets of one experiment, the label vocabulary and notes on the split."""

    train: MultimodalDataset
    validation: Optional[MultimodalDataset]
    test: Optional[MultimodalDataset]
    vocab: Optional[LabelVocab]
    notes: list[str] = field(default_factory=list)

    def items(self) -> list[tuple[str, MultimodalDataset]]:
        """(name, dataset) for the splits that exist."""
        return [(n, d) for n, d in (("train", self.train), ("validation", self.validation), ("test", self.test))
                if d is not None]

    def sizes(self) -> dict[str, int]:
        """Rows per split."""
        return {n: len(d) for n, d in self.items()}

    def skip_report(self) -> dict:
        """Skip counts per split, up front and while loading (JSON-ready)."""
        return {n: d.skip_counts().to_dict() for n, d in self.items()}


class _Rows(Sequence):
    """Row view of a table (list or `datasets.Dataset`) restricted to some row ids."""

    def __init__(self, rows: Any, ids: list[int]) -> None:
        self.rows, self.ids = rows, list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:  # type: ignore[override]
        return self.rows[self.ids[i]]


@dataclass
class _Table:
    rows: Any
    base_dir: Optional[str]
    source: str
    ids: Optional[list[int]] = None  # row numbers in `source` (for messages); None: 0..n-1

    def subset(self, positions: list[int]) -> _Table:
        ids = self.ids if self.ids is not None else list(range(len(self.rows)))
        return _Table(_Rows(self.rows, positions), self.base_dir, self.source, [ids[p] for p in positions])


def _is_dataset_dict(obj: Any) -> bool:
    try:
        import datasets as hfds
    except ImportError:  # pragma: no cover - datasets is a dependency
        return isinstance(obj, dict)
    return isinstance(obj, (hfds.DatasetDict, dict))


def _tables(cfg: Any, wanted_columns: list[str], dataset: Any) -> tuple[dict[str, _Table], Optional[str]]:
    """The named tables of the data (split -> table; "all" for one unsplit table) and the split column."""
    split_column = cfg.split_column
    if cfg.demo:
        manifest = make_demo(cfg.demo, size=cfg.demo_size, root=cfg.demo_dir, seed=cfg.split_seed)
        return {"all": _Table(read_manifest(manifest), os.path.dirname(manifest), manifest)}, "split"
    if dataset is not None or cfg.hf_dataset:
        if dataset is None:
            import datasets as hfds

            try:
                dataset = hfds.load_from_disk(cfg.hf_dataset)
            except (OSError, ValueError) as err:
                raise DataError(f"data.hf_dataset: {cfg.hf_dataset!r} is not a folder written by datasets' "
                                f"save_to_disk ({type(err).__name__}: {err})") from err
        source = cfg.hf_dataset or "<datasets>"
        keep = [c for c in (*wanted_columns, split_column) if c]

        def only_needed(ds: Any) -> Any:
            # Rows of a `datasets.Dataset` decode every column (images, audio): keep just the ones used.
            cols = [c for c in dict.fromkeys(keep) if c in getattr(ds, "column_names", [])]
            return ds.select_columns(cols) if cols and hasattr(ds, "select_columns") else ds

        if _is_dataset_dict(dataset):
            tables = {split_name(k, source): _Table(only_needed(dataset[k]), None, f"{source}[{k}]") for k in dataset}
            return (tables if list(tables) != ["train"] else {"all": tables["train"]}), split_column
        return {"all": _Table(only_needed(dataset), None, source)}, split_column
    if not cfg.train:
        raise DataError("no data: set data.train (a manifest), data.hf_dataset or data.demo")
    tables = {}
    for name in SPLITS:
        path = getattr(cfg, name)
        if path:
            tables[name] = _Table(read_manifest(path), os.path.dirname(os.path.abspath(path)), path)
    return (tables if list(tables) != ["train"] else {"all": tables["train"]}), split_column


def _by_split_column(table: _Table, column: str) -> dict[str, _Table]:
    if not len(table.rows) or column not in table.rows[0]:
        raise DataError(f"{table.source}: split column {column!r} not found")
    grouped: dict[str, list[int]] = {}
    for i in range(len(table.rows)):
        where = f"{table.source}: row {i + 1}, split column {column!r}"
        grouped.setdefault(split_name(table.rows[i][column], where), []).append(i)
    return {name: table.subset(ids) for name, ids in grouped.items()}


def _carve(table: _Table, val_fraction: float, test_fraction: float, seed: int, group_column: Optional[str],
           strat_column: Optional[str]) -> tuple[dict[str, _Table], list[str]]:
    """Split one table's rows (by group) into train/validation/test with `assign_splits`."""
    n = len(table.rows)
    if group_column:
        if n and group_column not in table.rows[0]:
            raise DataError(f"{table.source}: group column {group_column!r} not found")
        keys = [str(cell(table.rows[i][group_column])) for i in range(n)]
    else:
        keys = [str(i) for i in range(n)]
    units: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        units.setdefault(key, []).append(i)
    unit_rows = list(units.values())
    labels = None
    if strat_column and n and strat_column in table.rows[0]:
        labels = [cell(table.rows[rows[0]][strat_column]) for rows in unit_rows]
        labels = None if any(is_missing(v) or isinstance(v, (list, dict)) for v in labels) else labels
    assignment, notes = assign_splits(len(unit_rows), labels, val_fraction, test_fraction, seed)
    picked: dict[str, list[int]] = {s: [] for s in SPLITS}
    for rows, split in zip(unit_rows, assignment):
        picked[split].extend(rows)
    if group_column:
        notes.append(f"split by {group_column!r}: {len(unit_rows)} groups, each in one split")
    return {s: table.subset(sorted(ids)) for s, ids in picked.items() if ids}, notes


def _carve_missing(tables: dict[str, _Table], cfg: Any, group_column: Optional[str], strat: Optional[str]) -> list[str]:
    """Carve the validation split (and the test split, when neither is named) out of the training table."""
    carve_val = "validation" not in tables and cfg.val_fraction > 0
    carve_test = "validation" not in tables and "test" not in tables and cfg.test_fraction > 0
    if not (carve_val or carve_test):
        return []
    parts, notes = _carve(tables["train"], cfg.val_fraction if carve_val else 0.0,
                          cfg.test_fraction if carve_test else 0.0, cfg.split_seed, group_column, strat)
    made = [s for s in ("validation", "test") if s in parts]
    tables.update(parts)
    return [f"{' and '.join(made) or 'no split'} carved out of {tables['train'].source} (seed {cfg.split_seed})", *notes]


def build_splits(
    cfg: Any,
    columns: dict[str, str],
    label_column: Optional[str] = None,
    label_type: Optional[str] = "single_label",
    group_column: Optional[str] = None,
    dataset: Any = None,
    progress: bool = True,
) -> DataSplits:
    """Validated train/validation/test datasets from a `DataConfig` (or an in-memory `datasets` object).

    `columns` maps modality -> column; `group_column` keeps rows together (defaults to ``cfg.group_column``);
    single-label data is stratified by `label_column` when ``cfg.stratify``.
    """
    group_column = cfg.group_column or group_column
    wanted = [*columns.values(), label_column, group_column]
    tables, split_column = _tables(cfg, [c for c in wanted if c], dataset)
    if "all" in tables and split_column:
        tables = _by_split_column(tables.pop("all"), split_column)
    if "all" in tables:
        tables["train"] = tables.pop("all")
    if "train" not in tables:
        raise DataError("no training split found (give data.train, a 'train' split or a single table to split)")
    strat = label_column if (cfg.stratify and label_type == "single_label") else None
    notes = _carve_missing(tables, cfg, group_column, strat)

    def make(name: str, vocab: Optional[LabelVocab]) -> MultimodalDataset:
        table = tables[name]
        limit = cfg.max_train_samples if name == "train" else None
        if limit is not None and len(table.rows) > limit:
            # A seeded random subset, not the first rows (a manifest sorted by class would lose classes).
            keep = sorted(np.random.default_rng(cfg.split_seed).choice(len(table.rows), limit, replace=False).tolist())
            table = table.subset(keep)
            notes.append(f"train limited to {limit} random rows (data.max_train_samples)")
        return MultimodalDataset(
            table.rows, columns, label_column=label_column, label_type=label_type, vocab=vocab,
            base_dir=table.base_dir, source=table.source, on_bad_sample=cfg.on_bad_sample,
            required_modalities=cfg.required_modalities, multi_label_separator=cfg.multi_label_separator,
            validate=cfg.validate, row_ids=table.ids, progress=progress, limits=MediaLimits.from_config(cfg),
        )

    fixed = LabelVocab(cfg.labels, label_type or "single_label") if cfg.labels else None
    train = make("train", fixed)
    if len(train) == 0:
        raise DataError(f"{tables['train'].source}: training split is empty after validation "
                        f"(skipped: {train.skipped.to_dict()})")
    if label_type == "single_label" and train.vocab is not None and len(train.vocab) < 2:
        raise DataError(f"{tables['train'].source}: label column {label_column!r} has {len(train.vocab)} class "
                        f"({train.vocab.names}) in the training split; single-label classification needs at least 2")
    validation = make("validation", train.vocab) if "validation" in tables else None
    test = make("test", train.vocab) if "test" in tables else None
    splits = DataSplits(train, validation, test, train.vocab, notes)
    if getattr(cfg, "shots_per_class", None):
        seed = getattr(cfg, "shots_seed", None)
        apply_shots(splits, cfg.shots_per_class, cfg.split_seed if seed is None else seed, group_column)
    return splits


def subset(dataset: MultimodalDataset, positions: Sequence[int]) -> MultimodalDataset:
    """The items at `positions` of `dataset` (same rows, vocabulary and source), as a dataset of its own class."""
    out = copy.copy(dataset)
    out.indices = [dataset.indices[p] for p in positions]
    return out


def units_of(dataset: MultimodalDataset, group_column: Optional[str]) -> list[list[int]]:
    """Dataset positions grouped by `group_column` (first-seen order), or one unit per position."""
    if not group_column:
        return [[p] for p in range(len(dataset))]
    groups: dict[str, list[int]] = {}
    for p, value in enumerate(_column(dataset, group_column, "group")):
        groups.setdefault(value, []).append(p)
    return list(groups.values())


def _column(dataset: MultimodalDataset, column: str, what: str, required: bool = False) -> list[str]:
    """The value of `column` at every position, as text; DataError if the column is missing (or, when
    `required`, a cell is empty)."""
    if len(dataset) and column not in dataset.row(0):
        raise DataError(f"{dataset.source}: {what} column {column!r} not found")
    values = []
    for p in range(len(dataset)):
        value = dataset.value(p, column)
        if required and value is None:
            raise DataError(f"{dataset.where(dataset.indices[p])}: {what} column {column!r} is empty")
        values.append(str(value))
    return values


def take_shots(dataset: MultimodalDataset, k: int, seed: int = 0,
               group_column: Optional[str] = None) -> tuple[MultimodalDataset, str]:
    """K seeded rows (or `group_column` groups) per class of a single-label dataset; returns it and a note."""
    if dataset.label_type != "single_label":
        raise DataError(f"data.shots_per_class samples rows per class of a single-label task; {dataset.source} has "
                        f"{dataset.label_type or 'no'} labels")
    units = units_of(dataset, group_column)
    encoded = dataset.labels()
    chosen, short = pick_shots([int(encoded[u[0]]) for u in units], k, seed)  # a unit's class: its first row's
    picked = [p for u in chosen for p in units[u]]
    what = f"{group_column!r} groups" if group_column else "rows"
    note = f"train: {k} {what} per class (data.shots_per_class, seed {seed}), {len(picked)} rows"
    if short:
        names = [dataset.vocab.names[c] if dataset.vocab is not None else str(c) for c in short]
        note += f"; fewer than {k} available for {names[:10]}"
    return subset(dataset, sorted(picked)), note


def apply_shots(splits: DataSplits, k: int, seed: int = 0, group_column: Optional[str] = None) -> DataSplits:
    """K shots per class in train, and at most K per class in validation (so model selection uses no more
    labels than training); the test split is untouched. Modifies and returns `splits`."""
    splits.train, note = take_shots(splits.train, k, seed, group_column)
    splits.notes.append(note)
    if splits.validation is not None:
        splits.validation, note = take_shots(splits.validation, k, seed + 1, group_column)
        splits.notes.append(note.replace("train:", "validation:", 1))
    return splits


def fold_units(dataset: MultimodalDataset, folds: Any = None, fold_column: Optional[str] = None,
               group_column: Optional[str] = None, seed: int = 0) -> tuple[list[tuple[str, list[int]]], str]:
    """The test positions of every fold, named, and a description of the scheme.

    ``folds=K``: K seeded folds (`assign_folds`: stratified by label for single-label data, `group_column` groups
    kept whole); ``folds="groups"``: one fold per `group_column` value; `fold_column`: one fold per distinct value
    of that column (both `leave_one_group_out`).
    """
    if fold_column or folds == "groups":
        column = fold_column or group_column
        values = _column(dataset, column, "fold" if fold_column else "group", required=True)
        try:
            named = leave_one_group_out(values)
        except DataError as err:
            raise DataError(f"{dataset.source}: column {column!r} has {err}") from None
        how = f"one fold per value of {column!r}" if fold_column else f"leave one {column!r} group out"
        return [(f"{column}={value}", positions) for value, positions in named], how
    k = int(folds)
    labels = dataset.labels().tolist() if dataset.label_type == "single_label" else None
    groups = _column(dataset, group_column, "group") if group_column else None
    assignment = assign_folds(len(dataset), labels, k, seed, groups)
    named = [(f"fold-{f + 1}", [p for p, a in enumerate(assignment) if a == f]) for f in range(k)]
    splitter = type(fold_splitter(k, seed, labels, groups)).__name__
    how = f"{k}-fold, seed {seed} (scikit-learn's {splitter})" + (
        ", stratified by label" if "Stratified" in splitter else "") + (
        f", {group_column!r} groups kept whole" if group_column else "")
    return named, how


def fold_splits(pool: DataSplits, test: list[int], cfg: Any, group_column: Optional[str]) -> DataSplits:
    """Train / validation / test of one fold: `test` positions of the pooled dataset, validation carved from the
    rest (``data.val_fraction``, at least one row or group when there are two), shots applied to train.

    `cfg` is the ``data`` section (or the whole config) of the cross-validation."""
    full, data = pool.train, getattr(cfg, "data", cfg)
    test_set = set(test)
    rest = [p for p in range(len(full)) if p not in test_set]
    units = units_of(subset(full, rest), group_column)
    labels = None
    if data.stratify and full.label_type == "single_label":
        encoded = full.labels()
        labels = [int(encoded[rest[u[0]]]) for u in units]
    assignment, notes = ["train"] * len(units), []
    if data.val_fraction > 0:
        assignment, notes = assign_splits(len(units), labels, data.val_fraction, 0.0, data.split_seed, at_least_one=True)
    picked = {s: sorted(rest[p] for u, a in zip(units, assignment) if a == s for p in u) for s in ("train", "validation")}
    what = f"{group_column!r} groups" if group_column else "rows"
    carved = assignment.count("validation")
    note = (f"validation carved out of the training folds: {carved} of {len(units)} {what} (seed {data.split_seed})"
            if carved else "no validation split: data.val_fraction is 0" if data.val_fraction <= 0 else
            f"no validation carved out of the training folds: {len(units)} training {what} cannot spare one")
    splits = DataSplits(subset(full, picked["train"]), subset(full, picked["validation"]) if carved else None,
                        subset(full, test), pool.vocab, [*pool.notes, note, *notes])
    if data.shots_per_class:
        apply_shots(splits, data.shots_per_class, data.split_seed if data.shots_seed is None else data.shots_seed,
                    group_column)
    return splits


def write_splits(splits: DataSplits, directory: str) -> dict[str, str]:
    """Write the rows each split used (after skips) as ``<split>.csv`` with absolute file paths; returns paths.

    Tables of in-memory `datasets` samples are written as ``<split>.rows.json`` (their source and row ids).
    """
    import pandas as pd

    os.makedirs(directory, exist_ok=True)
    paths = {}
    for name, ds in splits.items():
        dropped = ds.skipped_while_loading()
        kept = [i for i in range(len(ds)) if ds.indices[i] not in dropped]
        rows = [dict(ds.row(i)) for i in kept]
        file_columns = [c for m, c in ds.columns.items() if m in FILE_MODALITIES]
        in_memory = any(not isinstance(r.get(c), (str, type(None), float)) for r in rows for c in file_columns)
        if in_memory:
            paths[name] = write_json(os.path.join(directory, f"{name}.rows.json"),
                                     {"source": ds.source, "row_ids": [ds.row_ids[ds.indices[i]] for i in kept]})
            continue
        for r in rows:
            for c in file_columns:
                path = cell_path(cell(r.get(c)), ds.base_dir) if not is_missing(cell(r.get(c))) else None
                if path is not None:
                    r[c] = path
        paths[name] = os.path.join(directory, f"{name}.csv")
        write_text(paths[name], pd.DataFrame(rows).to_csv(index=False))
    return paths
