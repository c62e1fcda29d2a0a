"""Streaming training data: shards from a manifest, per-rank dealing, worker-independent order, exact resume."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from PIL import Image

from multimodal import Trainer, get_task, load_config
from multimodal.data import DataError
from multimodal.data.shards import main as write_shards_cli
from multimodal.data.shards import write_shards
from multimodal.data.streaming import StreamingDataset, streaming_splits
from multimodal.tasks import build_loaders

COLUMNS = {"text": "text", "image": "image"}


def _manifest(root, n=30, audio=False, name="m.csv") -> str:
    os.makedirs(root / "img", exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        day = i % 2 == 0
        pixels = np.clip((200 if day else 40) + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "img" / f"{i}.png")
        row = {"text": f"a {'sunny' if day else 'dark'} scene {i}", "image": f"img/{i}.png", "label": "day" if day else "night"}
        if audio:
            os.makedirs(root / "wav", exist_ok=True)
            sf.write(root / "wav" / f"{i}.wav", np.sin(np.arange(800) * (0.1 + i / 100)).astype(np.float32), 8000)
            row["audio"] = f"wav/{i}.wav"
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / name, index=False)
    return str(root / name)


def _stream(shard_dir, rank=0, world=1, batch_size=4, buffer=8, seed=1) -> StreamingDataset:
    cfg = load_config(None, [f"data.webdataset={shard_dir}/shard-{{000000..000003}}.tar", "data.audio_column=null",
                             f"data.shuffle_buffer={buffer}", f"train.batch_size={batch_size}", f"train.seed={seed}"])
    return streaming_splits(cfg, COLUMNS, "label", "single_label", rank, world).train


def _indices(ds, workers=0, epoch=0) -> list[int]:
    ds.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(ds, batch_size=ds.batch_size, num_workers=workers,
                                         collate_fn=lambda s: [x["index"] for x in s])
    return [i for batch in loader for i in batch]


@pytest.fixture
def shards(tmp_path):
    manifest = _manifest(tmp_path, audio=True)
    index = write_shards(manifest, str(tmp_path / "shards"), {**COLUMNS, "audio": "audio"}, samples_per_shard=8)
    return tmp_path / "shards", index


def test_write_shards_index_and_decoding(shards):
    shard_dir, index = shards
    assert [s["count"] for s in index["shards"]] == [8, 8, 8, 6] and index["num_samples"] == 30
    assert index["labels"] == ["day", "night"] and index["label_counts"] == {"day": 15, "night": 15}
    cfg = load_config(None, [f"data.webdataset={shard_dir}/shard-{{000000..000003}}.tar", "train.batch_size=5"])
    ds = streaming_splits(cfg, {**COLUMNS, "audio": "audio"}, "label", "single_label").train
    item = next(iter(ds))
    assert item["image"].size == (16, 16) and item["text"].startswith("a ")
    wave, sr = item["audio"]
    assert sr == 8000 and wave.shape == (800,) and wave.dtype == np.float32  # decoded with soundfile
    assert item["label"] == (0 if "sunny" in item["text"] else 1)


def test_write_shards_names_the_bad_row(tmp_path, capsys):
    manifest = _manifest(tmp_path, n=6)
    frame = pd.read_csv(manifest)
    frame.loc[3, "image"] = "img/missing.png"
    frame.to_csv(manifest, index=False)
    with pytest.raises(SystemExit, match=r"row 4 \(line 5\).*missing.png"):
        write_shards_cli(["--manifest", manifest, "--output", str(tmp_path / "s")])
    assert write_shards_cli(["--manifest", manifest, "--output", str(tmp_path / "s"), "--on-bad-sample", "skip"]) == 0
    assert "wrote 5 samples in 1 shards" in capsys.readouterr().out
    assert json.load(open(tmp_path / "s" / "index.json"))["skipped"]["total"] == 1


def test_ranks_get_disjoint_equal_shares_independent_of_workers(shards):
    shard_dir, _ = shards
    per_rank = [_indices(_stream(shard_dir, rank=r, world=2)) for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == 12  # 30 // 2 = 15 -> 3 full batches of 4 on each rank
    # shards are dealt, not samples: each rank reads its own shards (so at most a shard's worth repeats)
    assert not set(per_rank[0]) & set(per_rank[1])
    assert _indices(_stream(shard_dir, rank=1, world=2), workers=2) == per_rank[1]  # same batches with 2 workers
    assert _indices(_stream(shard_dir), epoch=1) != _indices(_stream(shard_dir), epoch=0)  # reshuffled per epoch
    whole = _indices(_stream(shard_dir, batch_size=5))
    assert len(whole) == 30 and sorted(whole) == list(range(30))  # one process: every sample once


def test_set_position_continues_at_the_right_sample(shards):
    shard_dir, _ = shards
    ds = _stream(shard_dir)
    full = _indices(ds, epoch=2)
    ds.set_position(2, 3)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=lambda s: [x["index"] for x in s])
    assert [i for b in loader for i in b] == full[12:]


def test_fewer_samples_than_one_batch_per_rank_is_a_clear_error(shards):
    with pytest.raises(DataError, match="cannot fill one batch of 32 on each of 2 processes"):
        _stream(shards[0], world=2, batch_size=32)


def _config(tmp_path, tiny_text_dir, shard_dir, *extra):
    validation = _manifest(tmp_path / "val", n=8)
    return load_config(None, [
        f"data.webdataset={shard_dir}/shard-{{000000..000003}}.tar", f"data.validation={validation}",
        "data.audio_column=null", "data.num_workers=2", "data.shuffle_buffer=6",
        f"model.encoders={{text: 'text:{tiny_text_dir}', image: 'image:test_efficientnet'}}",
        "model.encoder_kwargs={image: {img_size: 32}}", "model.pretrained=false", "model.fusion_dim=16",
        "model.modality_dropout=0.3", "model.freeze_encoders=[image]", f"train.output_dir={tmp_path / 'out'}", "train.epochs=2", "train.batch_size=4",
        "train.log_with=none", "train.progress_bar=false", "train.keep_checkpoints=null", "train.seed=3", *extra])


def _train(cfg):
    task = get_task(cfg.model.task)(cfg)
    splits = task.build_splits(progress=False)
    model = task.build_model(splits)
    loaders = build_loaders(task, model, splits, progress=False)
    trainer = Trainer(model, cfg.train, loaders["train"], loaders["validation"],
                      compute_metrics_fn=lambda p: task.evaluate(p, splits.validation, model, full=False).metrics,
                      metric_for_best=task.default_metric(), eval_batch_loss=task.batch_loss)
    trainer.train()
    return trainer


@pytest.mark.slow
def test_resumed_streaming_run_continues_from_the_right_sample(tmp_path, tiny_text_dir, shards):
    shard_dir, _ = shards
    full = _train(_config(tmp_path / "a", tiny_text_dir, shard_dir))
    assert full.state.global_step == 14 and full.state.history[-1]["num_examples"] == 8  # 30 // 4 = 7 per epoch
    reference = {k: v.clone() for k, v in full.unwrapped_model.state_dict().items()}
    cut = _config(tmp_path / "b", tiny_text_dir, shard_dir, "train.stop_after_steps=10")
    _train(cut)
    cfg = copy.deepcopy(cut)
    cfg.train.stop_after_steps = None
    cfg.train.resume_from = str(tmp_path / "b" / "out" / "checkpoints" / "step-0000010")  # mid-epoch 2
    resumed = _train(cfg)
    assert resumed.state.global_step == 14
    for k, v in resumed.unwrapped_model.state_dict().items():
        assert torch.equal(v, reference[k]), k


def test_datasets_streaming_from_local_files(tmp_path, tiny_text_dir):
    manifest = _manifest(tmp_path, n=20)
    frame = pd.read_csv(manifest)
    frame["image"] = [str(tmp_path / p) for p in frame["image"]]
    frame.iloc[:12].to_csv(tmp_path / "part-0.csv", index=False)
    frame.iloc[12:].to_parquet(tmp_path / "part-1.parquet")
    cfg = load_config(None, [f"data.stream_files={tmp_path}/part-*", "train.batch_size=4", "data.shuffle_buffer=3"])
    ds = streaming_splits(cfg, COLUMNS, "label", "single_label").train
    items = list(ds)
    assert ds.total == 20 and sorted(i["index"] for i in items) == list(range(20))
    by_index = {i["index"]: i for i in items}
    assert by_index[13]["text"] == frame["text"][13] and by_index[13]["image"].size == (16, 16)
    with pytest.raises(DataError, match="no files match"):
        streaming_splits(load_config(None, [f"data.stream_files={tmp_path}/nothing-*.csv"]), COLUMNS, "label",
                         "single_label")
