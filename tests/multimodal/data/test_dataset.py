"""Data pipeline: manifests (CSV/JSONL/Parquet/datasets), splits, bad samples, missing modalities, collation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from PIL import Image

from multimodal.config import DataConfig
from multimodal.data import (
    BadSampleError,
    Collator,
    MultimodalDataset,
    build_splits,
    read_manifest,
)


def _splits(cfg: DataConfig, modalities: list[str], task: str = "single_label", dataset=None):
    columns = {m: getattr(cfg, f"{m}_column") or m for m in modalities}
    return build_splits(cfg, columns, cfg.label_column, task, dataset=dataset)


def _images(tmp_path, n):
    (tmp_path / "img").mkdir(exist_ok=True)
    paths = []
    for i in range(n):
        value = 230 if i % 2 else 20
        Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(tmp_path / "img" / f"{i}.png")
        paths.append(f"img/{i}.png")
    return paths


def _rows(tmp_path, n=12):
    paths = _images(tmp_path, n)
    return [
        {"text": f"caption {i}", "image": paths[i], "label": ["cat", "dog", "bird"][i % 3], "tags": "a|b" if i % 2 else "b"}
        for i in range(n)
    ]


def _cfg(path, **kw) -> DataConfig:
    kw.setdefault("num_workers", 0)
    return DataConfig(train=str(path), audio_column=None, **kw)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_manifest_formats_and_relative_paths(tmp_path, fmt):
    rows = _rows(tmp_path)
    frame = pd.DataFrame(rows)
    path = tmp_path / f"m.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "jsonl":
        frame.assign(tags=[r["tags"].split("|") for r in rows]).to_json(path, orient="records", lines=True)
    else:
        frame.assign(tags=[r["tags"].split("|") for r in rows]).to_parquet(path)
    assert len(read_manifest(str(path))) == 12
    splits = _splits(_cfg(path, val_fraction=0.25, test_fraction=0.25), ["image", "text"])
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 12
    assert splits.vocab.names == ["bird", "cat", "dog"]
    # stratified: every class in every split
    for ds in (splits.train, splits.validation, splits.test):
        assert set(ds.labels().tolist()) == {0, 1, 2}
    item = splits.train[0]
    assert isinstance(item["image"], Image.Image) and isinstance(item["text"], str)
    # multi-label from a '|' string (CSV) or a list (JSONL/Parquet)
    multi = _splits(_cfg(path, label_column="tags", val_fraction=0, test_fraction=0), ["text"], task="multi_label")
    assert multi.vocab.names == ["a", "b"]
    assert multi.train.labels().sum(0).tolist() == [6.0, 12.0]


def test_split_column_and_separate_manifests(tmp_path):
    rows = _rows(tmp_path)
    for i, r in enumerate(rows):
        r["split"] = ["train", "train", "val", "test"][i % 4]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    splits = _splits(_cfg(tmp_path / "m.csv", split_column="split"), ["text"])
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (6, 3, 3)
    pd.DataFrame(rows[:8]).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame(rows[8:]).to_csv(tmp_path / "val.csv", index=False)
    cfg = _cfg(tmp_path / "train.csv", validation=str(tmp_path / "val.csv"))
    splits = _splits(cfg, ["image", "text"])
    assert (len(splits.train), len(splits.validation), splits.test) == (8, 4, None)


def test_datasets_dataset_with_pil_and_audio_arrays(tmp_path):
    import datasets

    images = [Image.fromarray(np.full((8, 8), 10 * i, np.uint8)) for i in range(6)]
    audio = [{"array": np.sin(np.arange(800) * (i + 1) / 10).astype(np.float32), "sampling_rate": 8000} for i in range(6)]
    ds = datasets.Dataset.from_dict(
        {"text": [f"t{i}" for i in range(6)], "image": images, "audio": audio, "label": [0, 1, 0, 1, 0, 1]}
    ).cast_column("image", datasets.Image())
    dd = datasets.DatasetDict({"train": ds.select(range(4)), "validation": ds.select([4, 5])})
    cfg = DataConfig(num_workers=0)
    splits = _splits(cfg, ["audio", "image", "text"], dataset=dd)
    assert len(splits.train) == 4 and len(splits.validation) == 2
    item = splits.validation[1]
    assert isinstance(item["image"], Image.Image)
    wave, sr = item["audio"]
    assert sr == 8000 and wave.shape == (800,) and item["label"] == 1
    # a single Dataset is split by fractions
    splits = _splits(DataConfig(num_workers=0, val_fraction=0.5, test_fraction=0.0), ["text"], dataset=ds)
    assert len(splits.train) == 3 and len(splits.validation) == 3


def _bad_manifest(tmp_path):
    rows = _rows(tmp_path, 8)
    (tmp_path / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    rows[2]["image"] = "img/missing.png"
    rows[4]["image"] = "img/corrupt.png"
    rows[5]["text"] = ""  # text required below
    rows[6]["image"] = ""  # missing image: allowed, present=False
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    return tmp_path / "m.csv"


def test_bad_sample_errors_name_row_and_file(tmp_path):
    path = _bad_manifest(tmp_path)
    with pytest.raises(BadSampleError, match=r"m\.csv: row 3 \(line 4\): image column 'image'.*missing\.png"):
        _splits(_cfg(path, val_fraction=0, test_fraction=0), ["image", "text"])
    rows = read_manifest(str(path))
    rows[2]["image"] = rows[0]["image"]
    with pytest.raises(BadSampleError, match=r"row 5 .*corrupt\.png"):
        MultimodalDataset(rows, {"image": "image", "text": "text"}, "label", source=str(path), base_dir=str(tmp_path))


def test_skip_counts_and_missing_modality(tmp_path, tiny_text_dir):
    from encoders import create_encoder

    path = _bad_manifest(tmp_path)
    cfg = _cfg(path, val_fraction=0, test_fraction=0, on_bad_sample="skip", required_modalities=["text"])
    splits = _splits(cfg, ["image", "text"])
    assert len(splits.train) == 5
    report = splits.skip_report()["train"]
    assert report["total"] == 3 and report["by_reason"] == {"image": 2, "text": 1}
    # unknown label in a validation split
    rows = read_manifest(str(path))
    rows[0]["label"] = "zebra"
    val = MultimodalDataset(rows[:2], {"text": "text"}, "label", vocab=splits.vocab, source="val.csv", on_bad_sample="skip")
    assert val.skipped.by_reason == {"label": 1} and len(val) == 1
    with pytest.raises(BadSampleError, match=r"val\.csv: row 1 .*unknown label 'zebra'"):
        MultimodalDataset(rows[:2], {"text": "text"}, "label", vocab=splits.vocab, source="val.csv")
    # the row with an empty image cell is kept with present=False; the preprocessor gets None
    idx = [i for i in range(len(splits.train)) if splits.train[i]["image"] is None]
    assert len(idx) == 1
    image_enc = create_encoder("image:test_efficientnet", pretrained=False, img_size=32)
    text_enc = create_encoder(f"text:{tiny_text_dir}")
    collate = Collator({"image": image_enc.get_preprocessor(False), "text": text_enc.get_preprocessor(False)})
    batch = collate([splits.train[i] for i in range(len(splits.train))])
    assert batch["present"]["image"].tolist() == [i not in idx for i in range(5)]
    assert batch["present"]["text"].all()
    assert batch["index"].tolist() == list(range(5))
    assert batch["labels"].dtype == torch.long
    first = next(iter(batch["inputs"]["image"].values()))
    assert first.shape[0] == 5


def test_audio_files_validated(tmp_path):
    sf.write(tmp_path / "ok.wav", np.zeros(400, np.float32) + 0.1, 16000)
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    (tmp_path / "junk.wav").write_bytes(b"RIFF....WAVEjunk")
    rows = [
        {"text": "a", "audio": "ok.wav", "label": "x"},
        {"text": "b", "audio": "empty.wav", "label": "y"},
        {"text": "c", "audio": "junk.wav", "label": "x"},
        {"text": "d", "audio": None, "label": "y"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = DataConfig(train=str(tmp_path / "m.jsonl"), image_column=None, val_fraction=0, test_fraction=0, num_workers=0)
    with pytest.raises(BadSampleError, match=r"row 2: audio column 'audio'.*empty\.wav"):
        _splits(cfg, ["audio", "text"])
    cfg.on_bad_sample = "skip"
    splits = _splits(cfg, ["audio", "text"])
    assert len(splits.train) == 2 and splits.train.skipped.by_reason == {"audio": 2}
    wave, sr = splits.train[0]["audio"]
    assert sr == 16000 and wave.dtype == np.float32 and wave.shape == (400,)
    assert splits.train[1]["audio"] is None


def test_csv_na_like_strings_are_text_not_missing(tmp_path):
    paths = _images(tmp_path, 6)
    texts = ["NA", "None", "null", "n/a", "nan", "fine"]
    pd.DataFrame({"text": texts, "image": paths, "label": ["a", "b"] * 3}).to_csv(tmp_path / "m.csv", index=False)
    splits = _splits(_cfg(tmp_path / "m.csv", val_fraction=0.0, test_fraction=0.0), ["image", "text"])
    assert splits.train.skipped.total == 0
    assert sorted(splits.train[i]["text"] for i in range(len(splits.train))) == sorted(texts)


def test_max_train_samples_is_a_seeded_random_subset(tmp_path):
    paths = _images(tmp_path, 30)
    labels = ["cat"] * 10 + ["dog"] * 10 + ["owl"] * 10  # sorted by class: the first 12 rows hold two classes
    pd.DataFrame({"text": [f"t{i}" for i in range(30)], "image": paths, "label": labels}).to_csv(tmp_path / "m.csv", index=False)
    cfg = _cfg(tmp_path / "m.csv", val_fraction=0.0, test_fraction=0.0, max_train_samples=12)
    first, again = _splits(cfg, ["image", "text"]), _splits(cfg, ["image", "text"])
    assert len(first.train) == 12 and first.vocab.names == ["cat", "dog", "owl"]
    assert [first.train[i]["text"] for i in range(12)] == [again.train[i]["text"] for i in range(12)]


def test_small_stratified_split_falls_back_instead_of_crashing(tmp_path):
    paths = _images(tmp_path, 20)
    labels = [f"c{i % 5}" for i in range(20)]  # 5 classes; 10% of 20 rows = 2 rows per held-out split
    pd.DataFrame({"text": [f"t{i}" for i in range(20)], "image": paths, "label": labels}).to_csv(tmp_path / "m.csv", index=False)
    splits = _splits(_cfg(tmp_path / "m.csv"), ["image", "text"])
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (16, 2, 2)


def test_datasets_dict_with_only_train_is_split(tmp_path):
    import datasets as hfds

    n = 20
    ds = hfds.Dataset.from_dict({"text": [f"t{i}" for i in range(n)], "label": ["a", "b"] * (n // 2), "unused": list(range(n))})
    cfg = DataConfig(image_column=None, audio_column=None, num_workers=0, val_fraction=0.2, test_fraction=0.2)
    splits = _splits(cfg, ["text"], dataset=hfds.DatasetDict({"train": ds}))
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (12, 4, 4)


def test_split_column_error_names_the_row(tmp_path):
    paths = _images(tmp_path, 4)
    frame = pd.DataFrame({"text": list("abcd"), "image": paths, "label": ["x", "y"] * 2, "split": ["train", "train", "", "test"]})
    frame.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ValueError, match=r"row 3, split column 'split'"):
        _splits(_cfg(tmp_path / "m.csv", split_column="split"), ["image", "text"])


def test_multi_label_empty_csv_cell_is_all_negative(tmp_path):
    paths = _images(tmp_path, 4)
    pd.DataFrame({"text": list("abcd"), "image": paths, "label": ["x|y", "y", "", "x"]}).to_csv(tmp_path / "m.csv", index=False)
    cfg = _cfg(tmp_path / "m.csv", val_fraction=0.0, test_fraction=0.0)
    splits = _splits(cfg, ["image", "text"], task="multi_label")
    targets = {splits.train[i]["text"]: splits.train[i]["label"].tolist() for i in range(4)}
    assert targets == {"a": [1.0, 1.0], "b": [0.0, 1.0], "c": [0.0, 0.0], "d": [1.0, 0.0]}
