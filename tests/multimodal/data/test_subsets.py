"""K-shot sampling and cross-validation folds: seeded, stratified, groups kept whole, vocabulary unchanged."""

from __future__ import annotations

import collections

import pytest

from multimodal.data import DataError, MultimodalDataset
from multimodal.data.subsets import apply_shots, assign_folds, fold_units, subset, take_shots


def _dataset(n=40, classes=("a", "b", "c", "d"), groups=None):
    rows = [{"text": f"row {i}", "label": classes[i % len(classes)], "speaker": (groups[i] if groups else f"s{i}"),
             "fold": 1 + i % 5} for i in range(n)]
    return MultimodalDataset(rows, {"text": "text"}, "label", "single_label", validate=False, progress=False)


def test_take_shots_keeps_k_per_class_seeded_and_the_whole_vocabulary():
    ds = _dataset(40)
    shots, note = take_shots(ds, 3, seed=1)
    counts = collections.Counter(shots.labels().tolist())
    assert counts == {0: 3, 1: 3, 2: 3, 3: 3}
    assert shots.vocab.names == ds.vocab.names and len(shots) == 12 and "3 rows per class" in note
    again, _ = take_shots(ds, 3, seed=1)
    other, _ = take_shots(ds, 3, seed=2)
    assert again.indices == shots.indices and other.indices != shots.indices
    assert set(shots.indices) <= set(ds.indices)
    # more shots than a class has: all of them, and the note says so
    few, note = take_shots(ds, 20, seed=0)
    assert len(few) == 40 and "fewer than 20" in note


def test_take_shots_by_group_keeps_whole_groups():
    groups = [f"g{i // 2}" for i in range(40)]  # rows 2k and 2k+1 share a group, with labels k%4... per row
    rows = [{"text": f"r{i}", "label": "ab"[(i // 2) % 2], "item": groups[i]} for i in range(40)]
    ds = MultimodalDataset(rows, {"text": "text"}, "label", "single_label", validate=False, progress=False)
    shots, _ = take_shots(ds, 2, seed=0, group_column="item")
    kept = collections.Counter(ds.value(p, "item") for p in range(len(ds)) if ds.indices[p] in set(shots.indices))
    assert len(shots) == 8 and len(kept) == 4 and set(kept.values()) == {2}


def test_take_shots_needs_single_label():
    rows = [{"text": "x", "label": 1.0}, {"text": "y", "label": 2.0}]
    ds = MultimodalDataset(rows, {"text": "text"}, "label", "regression", validate=False, progress=False)
    with pytest.raises(DataError, match="single-label"):
        take_shots(ds, 1)


def test_assign_folds_is_balanced_and_stratified():
    labels = ["a"] * 13 + ["b"] * 7 + ["c"] * 5
    folds = assign_folds(len(labels), labels, k=5, seed=3)
    sizes = collections.Counter(folds)
    assert max(sizes.values()) - min(sizes.values()) <= 1
    for c in "abc":
        per = collections.Counter(f for f, label in zip(folds, labels) if label == c)
        assert max(per.values()) - min(per.get(f, 0) for f in range(5)) <= 1
    assert assign_folds(len(labels), labels, 5, seed=3) == folds
    with pytest.raises(DataError, match="cannot make 5 folds"):
        assign_folds(3, None, 5)


def test_fold_units_schemes_cover_every_row_once():
    groups = [f"spk{i % 6}" for i in range(36)]
    ds = _dataset(36, groups=groups)
    for kwargs in ({"folds": 4}, {"folds": "groups", "group_column": "speaker"}, {"fold_column": "fold"},
                   {"folds": 3, "group_column": "speaker"}):
        folds, how = fold_units(ds, **kwargs)
        positions = sorted(p for _, test in folds for p in test)
        assert positions == list(range(36)), kwargs
        if kwargs.get("group_column"):  # a speaker never straddles two folds
            for _, test in folds:
                inside = {groups[p] for p in test}
                assert all(groups[p] not in inside for _, other in folds if other is not test for p in other)
    folds, how = fold_units(ds, folds="groups", group_column="speaker")
    assert len(folds) == 6 and "leave one 'speaker' group out" == how
    folds, _ = fold_units(ds, fold_column="fold")
    assert [name for name, _ in folds] == [f"fold={v}" for v in range(1, 6)]
    assert all(ds.value(p, "fold") == 3 for p in dict(folds)["fold=3"])
    sub = subset(ds, [0, 5])
    assert len(sub) == 2 and sub.value(1, "text") == "row 5"
    with pytest.raises(DataError, match="fold column 'nope' not found"):
        fold_units(ds, fold_column="nope")


def test_apply_shots_cuts_train_and_validation_but_not_test():
    from multimodal.data import DataSplits

    ds = _dataset(40)
    splits = DataSplits(subset(ds, range(0, 24)), subset(ds, range(24, 32)), subset(ds, range(32, 40)), ds.vocab)
    apply_shots(splits, 1, seed=0)
    assert len(splits.train) == 4 and len(splits.validation) == 4 and len(splits.test) == 8
    assert sorted(splits.validation.labels().tolist()) == [0, 1, 2, 3]
    assert [n.split(":")[0] for n in splits.notes] == ["train", "validation"]
