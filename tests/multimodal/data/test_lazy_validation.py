"""data.validate=false: bad files found while loading follow on_bad_sample (skipped and counted with their rows,
in DataLoader workers too, or an error naming the row), with the feature cache as well; truncated audio is
reported, up front and while loading."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from PIL import Image

from multimodal import load_config, run
from multimodal.cache import CachedFeatureCollator, cache_datasets
from multimodal.config import DataConfig
from multimodal.data import BadSampleError, Collator, DataError, build_splits, make_dataloader
from tests.multimodal.cache.test_cache import CountingImageEncoder


class _Model(torch.nn.Module):
    """Just what `cache_datasets` asks of a model: frozen encoders by modality."""

    def __init__(self) -> None:
        super().__init__()
        self.encoders = torch.nn.ModuleDict({"image": CountingImageEncoder()})
        self.encoders.requires_grad_(False)


def _manifest(tmp_path, n=12, bad=(2, 7)):
    """Rows 1..n with an image each; the images of rows in `bad` (1-based) are a missing and a corrupt file."""
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(n):
        name = f"img/{i}.png"
        if i + 1 == bad[0]:
            name = "img/missing.png"
        elif i + 1 == bad[1]:
            (tmp_path / "img" / f"{i}.png").write_bytes(b"\x89PNG not really")
        else:
            Image.fromarray(np.full((8, 8, 3), 15 * i, np.uint8)).save(tmp_path / "img" / f"{i}.png")
        rows.append({"text": f"caption {i}", "image": name, "label": "ab"[i % 2]})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    return str(tmp_path / "m.csv")


def _splits(path, **kw):
    cfg = DataConfig(train=path, audio_column=None, val_fraction=0, test_fraction=0, num_workers=0, validate=False, **kw)
    return build_splits(cfg, {"image": "image", "text": "text"}, "label", "single_label", progress=False)


def _collate():
    enc = CountingImageEncoder()
    return Collator({"image": enc.get_preprocessor(False), "text": lambda texts: {"n": torch.tensor([len(texts)])}})


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_is_honoured_while_loading_with_counts_and_rows(tmp_path, workers):
    splits = _splits(_manifest(tmp_path), on_bad_sample="skip")
    train = splits.train
    assert len(train) == 12 and train.skipped.total == 0  # no file was opened up front
    loader = make_dataloader(train, _collate(), batch_size=4, num_workers=workers)
    seen = [i for batch in loader for i in batch["index"].tolist()]
    assert sorted(seen) == [i for i in range(12) if i not in (1, 6)]
    for _ in loader:  # a second epoch counts each row once
        pass
    report = splits.skip_report()["train"]
    assert report["total"] == 2 and report["by_reason"] == {"image": 2} and report["while_loading"] == 2
    assert report["rows"] == [2, 7]
    assert "m.csv: row 2 (line 3): image column 'image'" in report["examples"][0] and "missing.png" in report["examples"][0]
    assert "m.csv: row 7 (line 8)" in report["examples"][1] and "UnidentifiedImageError" in report["examples"][1]


def test_error_names_the_row_while_loading(tmp_path):
    train = _splits(_manifest(tmp_path)).train
    with pytest.raises(BadSampleError, match=r"m\.csv: row 2 \(line 3\): image column 'image' \(file .*missing\.png\)"):
        [train[i] for i in range(len(train))]


def test_a_batch_of_bad_rows_only_is_a_data_error(tmp_path):
    train = _splits(_manifest(tmp_path, n=4, bad=(1, 2)), on_bad_sample="skip").train
    with pytest.raises(DataError, match=r"2 of the 2 rows of a batch are bad.*row 1 .*row 2 .*data\.validate=true"):
        list(make_dataloader(train, _collate(), batch_size=2, num_workers=0))
    train_collate = Collator(_collate().preprocessors, min_samples=2)
    with pytest.raises(DataError, match=r"2 of the 3 rows of a batch are bad"):
        train_collate([train[0], train[1], train[2]])


@pytest.mark.parametrize("on_bad_sample", ["error", "skip"])
def test_feature_cache_honours_on_bad_sample_and_names_the_row(tmp_path, on_bad_sample):
    splits = _splits(_manifest(tmp_path), on_bad_sample=on_bad_sample)
    model = _Model()
    if on_bad_sample == "error":
        with pytest.raises(BadSampleError, match=r"m\.csv: row 2 \(line 3\): image column 'image' \(file .*missing"
                                                 r"\.png\): FileNotFoundError"):
            cache_datasets(model, {"train": splits.train}, tmp_path / "cache", show_progress=False)
        return
    wrapped, caches = cache_datasets(model, {"train": splits.train}, tmp_path / "cache", show_progress=False)
    assert len(wrapped["train"]) == 10 and len(splits.train) == 10
    report = splits.skip_report()["train"]
    assert report["rows"] == [2, 7] and report["by_reason"] == {"image": 2}
    assert "UnidentifiedImageError" in report["examples"][1]
    collate = CachedFeatureCollator(Collator({}), caches)
    batch = collate([wrapped["train"][i] for i in range(10)])
    assert batch["features"]["image"].pooled.shape[0] == 10


def _wavs(tmp_path):
    sf.write(tmp_path / "ok.wav", np.full(8000, 0.1, np.float32), 16000)
    sf.write(tmp_path / "full.wav", np.full(8000, 0.2, np.float32), 16000)
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])  # the header still says 8000 frames
    sf.write(tmp_path / "full.flac", np.random.default_rng(0).normal(0, 0.3, 8000).astype(np.float32), 16000)
    data = (tmp_path / "full.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[: len(data) * 4 // 5])  # opens and decodes its first frames fine
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    rows = [{"text": "a", "audio": "ok.wav", "label": "x"}, {"text": "b", "audio": "cut.wav", "label": "y"},
            {"text": "c", "audio": "cut.flac", "label": "x"}, {"text": "d", "audio": "ok.wav", "label": "y"},
            {"text": "e", "audio": "empty.wav", "label": "x"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return str(tmp_path / "m.jsonl")


@pytest.mark.parametrize("validate", [True, False])
def test_truncated_and_empty_audio_is_reported(tmp_path, validate):
    cfg = DataConfig(train=_wavs(tmp_path), image_column=None, val_fraction=0, test_fraction=0, num_workers=0,
                     validate=validate, on_bad_sample="skip")
    splits = build_splits(cfg, {"audio": "audio", "text": "text"}, "label", "single_label", progress=False)
    if validate:
        assert len(splits.train) == 2
    else:
        items = [splits.train[i] for i in range(len(splits.train))]
        assert [("skipped" in it) for it in items] == [False, True, True, False, True]
    report = splits.skip_report()["train"]
    assert report["rows"] == [2, 3, 5]
    assert "row 2: audio column 'audio'" in report["examples"][0]
    assert "cut.wav' is truncated: its header declares 8000 frames, the file holds 3989 (50%)" in report["examples"][0]
    assert "row 3" in report["examples"][1] and "cut.flac" in report["examples"][1]
    assert ("cannot be decoded up to its last frames" if validate else "flac decoder lost sync") in report["examples"][1]
    assert "row 5" in report["examples"][2] and "empty.wav' is empty" in report["examples"][2]


def test_run_with_lazy_validation_counts_the_rows_it_skipped(tmp_path):
    path = _manifest(tmp_path, n=16, bad=(3, 10))
    cfg = load_config(None, [
        "data.demo=null", f"data.train={path}", "data.audio_column=null", "data.text_column=null",
        "data.num_workers=0", "data.val_fraction=0.25", "data.test_fraction=0", "data.feature_cache=null",
        "data.validate=false", "data.on_bad_sample=skip", "data.stratify=false",
        "model.encoders={image: 'image:test_efficientnet'}", "model.encoder_kwargs={image: {img_size: 32}}",
        "model.pretrained=false", "model.fusion_dim=8", f"train.output_dir={tmp_path / 'out'}", "train.epochs=2",
        "train.batch_size=4", "train.log_with=none", "train.progress_bar=false", "eval.baselines=false"])
    metrics = run(cfg)
    skipped = metrics["skipped"]
    assert sum(s["total"] for s in skipped.values()) == 2
    assert sorted(r for s in skipped.values() for r in s["rows"]) == [3, 10]
    assert all(s["while_loading"] == s["total"] for s in skipped.values())
    written = pd.concat([pd.read_csv(tmp_path / "out" / "splits" / f) for f in os.listdir(tmp_path / "out" / "splits")])
    assert len(written) == 14 and not written["image"].str.contains("missing|/9\\.png").any()
