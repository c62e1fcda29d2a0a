"""K-shot sampling and cross-validation folds (scikit-learn's splitters): seeded, stratified, groups kept whole,
vocabulary unchanged; what the hand-written assignment did before still holds."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from multimodal.data import DataError, MultimodalDataset
from multimodal.data.partition import assign_folds, assign_splits, leave_one_group_out
from multimodal.data.splits import apply_shots, fold_units, subset, take_shots


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


def _round_robin(labels, k, seed):
    """The fold assignment before scikit-learn: each class's units shuffled and dealt round-robin, continuing
    where the previous class stopped."""
    rng = np.random.default_rng(seed)
    out, slot, classes = [0] * len(labels), 0, {}
    for unit, label in enumerate(labels):
        classes.setdefault(str(label), []).append(unit)
    for name in sorted(classes):
        for j in rng.permutation(len(classes[name])):
            out[classes[name][j]] = slot % k
            slot += 1
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stratified_k_fold_gives_the_same_counts_as_the_round_robin_it_replaces(seed):
    rng = np.random.default_rng(seed)
    labels = [str(c) for c in rng.integers(0, 4, 47)]
    for k in (2, 3, 5):
        new, old = assign_folds(len(labels), labels, k, seed), _round_robin(labels, k, seed)
        assert sorted(collections.Counter(new).values()) == sorted(collections.Counter(old).values())
        for c in set(labels):
            per = [sorted(collections.Counter(f for f, y in zip(folds, labels) if y == c).get(i, 0) for i in range(k))
                   for folds in (new, old)]
            assert per[0] == per[1], (k, c)
    unlabelled = assign_folds(10, None, 3, seed)
    assert sorted(collections.Counter(unlabelled).values()) == [3, 3, 4]


def test_folds_are_not_stratified_when_no_class_has_k_units():
    labels = ["a", "b", "c", "d", "e", "f"]  # StratifiedKFold refuses this; the folds fall back to KFold
    folds = assign_folds(6, labels, 3, seed=0)
    assert sorted(collections.Counter(folds).values()) == [2, 2, 2]
    _, how = fold_units(_dataset(6, classes=tuple("abcdef")), folds=3)
    assert "KFold" in how and "stratified" not in how


def test_grouped_k_fold_keeps_groups_whole_and_spreads_the_classes():
    groups = [f"g{i // 4}" for i in range(48)]  # 12 groups of 4 rows, each group with both classes
    labels = ["ab"[i % 2] for i in range(48)]
    folds = assign_folds(48, labels, 4, seed=0, groups=groups)
    for g in set(groups):
        assert len({f for f, gg in zip(folds, groups) if gg == g}) == 1
    assert sorted(collections.Counter(folds).values()) == [12, 12, 12, 12]
    for c in "ab":
        assert sorted(collections.Counter(f for f, y in zip(folds, labels) if y == c).values()) == [6, 6, 6, 6]
    ds = _dataset(48, classes=("a", "b"), groups=groups)
    _, how = fold_units(ds, folds=4, group_column="speaker")
    assert how == "4-fold, seed 0 (scikit-learn's StratifiedGroupKFold), stratified by label, 'speaker' groups kept whole"
    with pytest.raises(DataError, match="cannot make 13 folds out of 12 rows/groups"):
        assign_folds(48, labels, 13, groups=groups)


def test_leave_one_group_out_is_the_grouping_by_value_in_natural_order():
    values = ["10", "2", "1", "2", "10", "1", "2"]
    folds = leave_one_group_out(values)
    assert folds == [("1", [2, 5]), ("2", [1, 3, 6]), ("10", [0, 4])]
    assert [v for v, _ in leave_one_group_out(["b", "a", "b"])] == ["a", "b"]
    with pytest.raises(DataError, match="1 distinct value"):
        leave_one_group_out(["x", "x"])


def test_assign_splits_at_least_one_keeps_a_held_out_unit_where_rounding_gives_none():
    plain, _ = assign_splits(5, None, 0.1, 0.0, seed=0)
    assert plain.count("validation") == 0  # round(0.5) == 0
    out, _ = assign_splits(5, None, 0.1, 0.0, seed=0, at_least_one=True)
    assert out.count("validation") == 1 and out.count("train") == 4
    out, _ = assign_splits(1, None, 0.1, 0.0, seed=0, at_least_one=True)
    assert out == ["train"]  # train keeps its one unit
    out, notes = assign_splits(3, ["a", "b", "c"], 0.1, 0.0, seed=0, at_least_one=True)
    assert out == ["train"] * 3 and "validation: 0 rows/groups instead of 1" in notes[0]
