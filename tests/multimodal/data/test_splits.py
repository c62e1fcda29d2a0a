"""Splits: one seeded assignment function, validation carved where the data lacks it, stratification that
keeps every class in train, groups kept together, split manifests written, each file checked once."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from multimodal.config import DataConfig
from multimodal.data import DataError, assign_splits, build_splits, read_manifest, write_splits
from multimodal.data import dataset as dataset_module


def _table(tmp_path, labels, name="m.csv", extra=None):
    (tmp_path / "img").mkdir(exist_ok=True)
    rows = []
    for i, label in enumerate(labels):
        path = tmp_path / "img" / f"{i}.png"
        if not path.exists():
            Image.fromarray(np.full((8, 8, 3), i % 255, np.uint8)).save(path)
        rows.append({"text": f"t{i}", "image": f"img/{i}.png", "label": label, **(extra(i) if extra else {})})
    pd.DataFrame(rows).to_csv(tmp_path / name, index=False)
    return str(tmp_path / name)


def _build(cfg, label_type="single_label", group=None):
    return build_splits(cfg, {"image": "image", "text": "text"}, "label", label_type, group_column=group, progress=False)


def test_assign_splits_sizes_seeded_and_stratified():
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    out, notes = assign_splits(100, labels, 0.1, 0.2, seed=3)
    again, _ = assign_splits(100, labels, 0.1, 0.2, seed=3)
    other, _ = assign_splits(100, labels, 0.1, 0.2, seed=4)
    assert out == again and out != other
    assert out.count("test") == 20 and out.count("validation") == 10
    per_class = {c: [s for s, y in zip(out, labels) if y == c] for c in "abc"}
    assert [per_class[c].count("test") for c in "abc"] == [10, 6, 4]  # proportional
    assert "stratified by label over 3 classes" in notes
    plain, notes = assign_splits(100, None, 0.1, 0.2, seed=3)
    assert plain.count("test") == 20 and not notes
    with pytest.raises(DataError, match="cannot split 3"):
        assign_splits(3, None, 0.5, 0.5)


def test_rare_classes_stay_in_train_and_are_reported(tmp_path):
    labels = ["common"] * 18 + ["pair", "pair"] + ["single"]
    cfg = DataConfig(train=_table(tmp_path, labels), audio_column=None, val_fraction=0.2, test_fraction=0.2, num_workers=0)
    splits = _build(cfg)
    train_names = {splits.vocab.names[i] for i in splits.train.labels().tolist()}
    assert train_names == {"common", "pair", "single"}  # every class keeps a row in train
    assert len(splits.validation) + len(splits.test) >= 7  # the held-out sizes are honoured where classes allow
    notes = " | ".join(splits.notes)
    assert "1 classes have one row/group and stay in train only: ['single']" in notes
    assert "validation and test carved out of" in notes and "stratified by label over 3 classes" in notes
    # nothing can fail later as "unknown label": every held-out label is in the vocabulary
    for ds in (splits.validation, splits.test):
        assert ds.skipped.total == 0


def test_validation_is_carved_from_train_when_only_test_or_a_split_column_is_given(tmp_path):
    labels = ["a", "b"] * 20
    train = _table(tmp_path, labels[:30], "train.csv")
    test = _table(tmp_path, labels[30:], "test.csv")
    cfg = DataConfig(train=train, test=test, audio_column=None, val_fraction=0.2, num_workers=0)
    splits = _build(cfg)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (24, 6, 10)
    assert any("validation carved out of" in n for n in splits.notes)
    column = _table(tmp_path, labels, "col.csv", extra=lambda i: {"split": "test" if i >= 30 else "train"})
    splits = _build(DataConfig(train=column, split_column="split", audio_column=None, val_fraction=0.1, num_workers=0))
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (27, 3, 10)
    # val_fraction=0 keeps the old behaviour: no validation split
    splits = _build(DataConfig(train=train, test=test, audio_column=None, val_fraction=0.0, num_workers=0))
    assert splits.validation is None


def test_groups_stay_in_one_split(tmp_path):
    labels = ["x"] * 60
    path = _table(tmp_path, labels, extra=lambda i: {"item": f"item{i // 3}"})
    cfg = DataConfig(train=path, audio_column=None, group_column="item", val_fraction=0.2, test_fraction=0.2, num_workers=0)
    splits = _build(cfg, label_type=None)
    seen = {}
    for name, ds in splits.items():
        for i in range(len(ds)):
            assert seen.setdefault(ds.value(i, "item"), name) == name
    assert len(set(seen.values())) == 3 and len(seen) == 20
    assert any("split by 'item': 20 groups" in n for n in splits.notes)


def test_split_manifests_are_written_with_absolute_paths(tmp_path):
    labels = ["a", "b"] * 10
    path = _table(tmp_path, labels)
    rows = read_manifest(path)
    rows[3]["image"] = "img/missing.png"
    pd.DataFrame(rows).to_csv(path, index=False)
    cfg = DataConfig(train=path, audio_column=None, on_bad_sample="skip", num_workers=0)
    splits = _build(cfg)
    paths = write_splits(splits, str(tmp_path / "out" / "splits"))
    assert sorted(paths) == ["test", "train", "validation"]
    total = 0
    for name, p in paths.items():
        written = read_manifest(p)
        total += len(written)
        assert len(written) == len(getattr(splits, name))
        assert all(os.path.isabs(r["image"]) and os.path.exists(r["image"]) for r in written)
    assert total == 19  # the bad row was skipped and is not written


def test_each_distinct_file_is_checked_once(tmp_path, monkeypatch):
    path = _table(tmp_path, ["a", "b"] * 3)
    rows = read_manifest(path)
    rows = [dict(r, image=rows[0]["image"]) for r in rows] + rows  # one image shared by 6 rows, plus 5 others
    pd.DataFrame(rows).to_csv(path, index=False)
    calls = []
    real = dataset_module.check_sample
    monkeypatch.setattr(dataset_module, "check_sample", lambda m, v, *rest: (calls.append((m, v)), real(m, v, *rest))[1])
    _build(DataConfig(train=path, audio_column=None, val_fraction=0, test_fraction=0, num_workers=0))
    image_calls = [v for m, v in calls if m == "image"]
    assert len(rows) == 12 and len(image_calls) == 6 and len(set(image_calls)) == 6


@pytest.mark.parametrize("validate", [True, False])
def test_table_errors_name_the_manifest_and_column(tmp_path, validate):
    path = _table(tmp_path, ["only"] * 10)
    with pytest.raises(DataError, match=r"m\.csv: label column 'label' has 1 class \(\['only'\]\)"):
        _build(DataConfig(train=path, audio_column=None, num_workers=0, validate=validate))
    with pytest.raises(DataError, match=r"m\.csv: column 'caption' \(for the text modality\) not found"):
        build_splits(DataConfig(train=path, audio_column=None, num_workers=0, validate=validate), {"text": "caption"},
                     "label", "single_label")
    val = _table(tmp_path, ["a", "b"], name="val.csv", extra=lambda i: {"note": i})
    pd.read_csv(val).drop(columns=["label"]).to_csv(val, index=False)
    with pytest.raises(DataError, match=r"val\.csv: column 'label' \(for the labels\) not found"):
        _build(DataConfig(train=_table(tmp_path, ["a", "b"] * 4), validation=val, audio_column=None, num_workers=0,
                          validate=validate))
