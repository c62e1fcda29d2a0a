"""Training data bigger than memory: WebDataset tar shards or `datasets` streaming from local files.

``data.webdataset: "shards/shard-{000000..000099}.tar"`` (shards written by ``multimodal-write-shards``, with
their ``index.json``) or ``data.stream_files: "parts/*.parquet"`` (CSV / JSONL / Parquet files read with
``datasets.load_dataset(..., streaming=True)``) replaces ``data.train``; validation and test stay ordinary
manifests (``data.validation`` / ``data.test``), so evaluation keeps counting each example once.

`StreamingDataset` is an ``IterableDataset`` whose epoch is a fixed function of (seed, epoch):

* **per-rank sharding**: shards are permuted per epoch and dealt round-robin to the processes; every process
  yields exactly ``samples_per_rank = total // world`` samples (a process whose shards hold fewer reads them
  again from the start), so all ranks run the same number of batches and none waits alone in a collective;
* **shuffling buffer**: a seeded buffer of ``data.shuffle_buffer`` undecoded records per process;
* **workers**: every DataLoader worker of a process walks the same record stream but decodes only its own
  batches (batch j goes to worker j mod workers, the order the DataLoader reads them in), so the batches do not
  depend on the number of workers; images and audio (soundfile) are decoded in the workers;
* **resumable position**: `set_position(epoch, batches_done)` skips the records of the batches already trained
  on without decoding them, so a resumed run continues from the right sample.

A sample that cannot be decoded stops the run with an error naming it (dropping it would leave the ranks
with different step counts); ``multimodal-write-shards`` checks every row before writing it.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from multimodal.data.batches import to_device
from multimodal.data.dataset import DataError, MultimodalDataset, SkipCounts
from multimodal.data.labels import LabelVocab
from multimodal.data.loading import epoch_seed
from multimodal.data.manifest import cell, is_missing, read_manifest
from multimodal.data.media import DEFAULT_LIMITS, MediaLimits, load_sample
from multimodal.data.shards import read_index
from multimodal.data.splits import DataSplits


@dataclass
class Shard:
    """One source file of the stream and how many samples it holds."""

    path: str
    count: int
    offset: int  # global sample number of its first sample (sample indices are unique across shards)


def expand_pattern(pattern: str) -> list[str]:
    """Files of a brace (``{000..099}``) and/or glob pattern, in order; DataError when none exist."""
    from braceexpand import braceexpand

    files: list[str] = []
    for part in braceexpand(pattern):
        matches = sorted(glob.glob(os.path.expanduser(part))) if any(c in part for c in "*?[") else [part]
        files.extend(matches)
    missing = [f for f in files if not os.path.isfile(f)]
    if not files or missing:
        raise DataError(f"pattern {pattern!r}: {'no files match' if not files else f'missing files {missing[:3]}'}")
    return [os.path.abspath(f) for f in files]


def _tar_records(path: str) -> Iterator[dict]:
    """Undecoded samples of one tar shard (webdataset groups the members by key)."""
    import webdataset as wds

    yield from wds.WebDataset(path, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False)


def _file_records(path: str) -> Iterator[dict]:
    """Rows of one CSV / JSONL / Parquet file through `datasets` streaming."""
    import datasets

    lower = path.lower()
    builder = "csv" if lower.endswith((".csv", ".tsv")) else "parquet" if lower.endswith((".parquet", ".pq")) else "json"
    kwargs = {"sep": "\t"} if lower.endswith(".tsv") else {}
    stream = datasets.load_dataset(builder, data_files=[path], split="train", streaming=True, **kwargs)
    yield from stream


def count_rows(path: str, label_column: Optional[str]) -> tuple[int, dict[str, int]]:
    """Rows of a table file and its label counts, reading only the label column (or the row count)."""
    import pandas as pd
    import pyarrow.parquet as pq

    lower = path.lower()
    if lower.endswith((".parquet", ".pq")):
        if not label_column:
            return pq.ParquetFile(path).metadata.num_rows, {}
        labels = pq.read_table(path, columns=[label_column]).column(0).to_pylist()
    elif lower.endswith((".csv", ".tsv")):
        frame = pd.read_csv(path, sep="\t" if lower.endswith(".tsv") else ",", dtype=object, keep_default_na=False,
                            usecols=[label_column] if label_column else None)
        if not label_column:
            return len(frame), {}
        labels = frame[label_column].tolist()
    else:
        frame = pd.read_json(path, lines=True, dtype=False)
        if not label_column:
            return len(frame), {}
        labels = frame[label_column].tolist()
    counts: dict[str, int] = {}
    for value in labels:
        for name in value if isinstance(value, list) else [value]:
            counts[str(name)] = counts.get(str(name), 0) + 1
    return len(labels), counts


class StreamingDataset(IterableDataset):
    """Training samples streamed from shards (see the module docstring); items match `MultimodalDataset`'s."""

    shards_by_process = True  # the Trainer leaves its loader unsplit: the dataset splits itself

    def __init__(self, shards: list[Shard], reader: Callable[[str], Iterator[dict]], columns: dict[str, str],
                 label_column: Optional[str], label_type: Optional[str], vocab: Optional[LabelVocab],
                 batch_size: int, seed: int = 0, shuffle_buffer: int = 1000, rank: int = 0, world: int = 1,
                 label_counts: Optional[dict[str, int]] = None, source: str = "<stream>",
                 limits: Optional[MediaLimits] = None) -> None:
        if not shards or sum(s.count for s in shards) < world * batch_size:
            raise DataError(f"{source}: {sum(s.count for s in shards)} samples cannot fill one batch of "
                            f"{batch_size} on each of {world} processes")
        self.shards, self.reader = shards, reader
        self.columns, self.label_column, self.label_type, self.vocab = dict(sorted(columns.items())), label_column, label_type, vocab
        self.batch_size, self.seed, self.buffer = int(batch_size), int(seed), max(1, int(shuffle_buffer))
        self.rank, self.world = int(rank), int(world)
        self.label_counts, self.source = label_counts or {}, source
        self.total = sum(s.count for s in shards)
        self.batches_per_rank = (self.total // self.world) // self.batch_size  # full batches only
        self.epoch, self.start_batch = 0, 0
        self.skipped = SkipCounts()
        self.limits = limits or DEFAULT_LIMITS

    def set_audio_window(self, seconds: Optional[float]) -> None:
        """Decode at most `seconds` of each audio file (at a seeded random offset: these are training samples)."""
        self.limits = self.limits.with_window(seconds)

    @property
    def has_labels(self) -> bool:
        """Whether samples carry a label."""
        return self.label_column is not None

    @property
    def modalities(self) -> list[str]:
        """Modalities read from the stream (sorted)."""
        return list(self.columns)

    def __len__(self) -> int:
        return self.batches_per_rank * self.batch_size

    def labels(self) -> np.ndarray:
        """Encoded labels with the stream's label counts (their order is not the stream's), for chance levels."""
        if self.vocab is None or self.label_type != "single_label":
            raise DataError(f"{self.source}: label array available for single-label streams only")
        return np.asarray([self.vocab.encode(n) for n, c in sorted(self.label_counts.items()) if n in self.vocab
                           for _ in range(c)], dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shard order and shuffling (resets the position to the epoch's start)."""
        self.epoch, self.start_batch = int(epoch), 0

    def set_position(self, epoch: int, batches_done: int) -> None:
        """Continue `epoch` after its first `batches_done` batches (of this process)."""
        self.epoch, self.start_batch = int(epoch), int(batches_done)

    # -- the record stream -------------------------------------------------------------------------
    def _my_shards(self) -> list[Shard]:
        order = torch.randperm(len(self.shards), generator=torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch)))
        mine = [self.shards[i] for i in order.tolist()[self.rank::self.world]]
        return mine or [self.shards[order[self.rank % len(self.shards)]]]

    def _records(self) -> Iterator[tuple[int, dict]]:
        """(global sample number, undecoded record): this process's shards through the shuffle buffer, which is
        emptied at the end of each pass, and passes repeated while more samples are wanted."""
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, 7])
        while True:
            buffer: list[tuple[int, dict]] = []
            for shard in self._my_shards():
                for i, record in enumerate(self.reader(shard.path)):
                    if len(buffer) < self.buffer:
                        buffer.append((shard.offset + i, record))
                        continue
                    k = int(rng.integers(len(buffer)))
                    yield buffer[k]
                    buffer[k] = (shard.offset + i, record)
            for k in rng.permutation(len(buffer)).tolist():
                yield buffer[k]

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        seed = epoch_seed(self.seed, self.epoch)
        wanted = self.batches_per_rank * self.batch_size
        for position, (number, record) in enumerate(self._records()):
            if position >= wanted:
                return
            batch = position // self.batch_size
            if batch < self.start_batch or (batch - self.start_batch) % workers != worker:
                continue  # another worker's batch, or one trained on before a resume: not decoded
            yield self._decode(number, record, seed)

    # -- decoding ----------------------------------------------------------------------------------
    def _raw(self, record: dict) -> tuple[dict[str, Any], Any]:
        """modality -> undecoded value, and the raw label, for a tar record or a table row."""
        if "__key__" in record:  # WebDataset
            import json

            meta = json.loads(record["json"]) if "json" in record else {}
            values: dict[str, Any] = {}
            for m in self.columns:
                member = next((k for k in record if k == "txt" and m == "text" or k.startswith(f"{m}.")), None)
                if member is not None:
                    values[m] = record[member].decode() if m == "text" else {"bytes": record[member]}
                elif m in meta.get("values", {}):
                    values[m] = meta["values"][m]
            return values, meta.get("label")
        values = {m: cell(record.get(c)) for m, c in self.columns.items()}
        return values, cell(record.get(self.label_column)) if self.label_column else None

    def _encode_label(self, raw: Any) -> Any:
        if self.label_type == "single_label":
            if str(raw) not in self.vocab and raw not in self.vocab:
                raise DataError(f"unknown label {raw!r} (known: {self.vocab.names})")
            return self.vocab.encode(raw if raw in self.vocab else str(raw))
        if self.label_type == "multi_label":
            target = np.zeros(len(self.vocab), dtype=np.float32)
            for v in raw if isinstance(raw, list) else ([] if is_missing(raw) else str(raw).split("|")):
                target[self.vocab.encode(v)] = 1.0
            return target
        return np.asarray(raw if isinstance(raw, list) else [raw], dtype=np.float32)

    def _decode(self, number: int, record: dict, seed: int) -> dict:
        values, raw_label = self._raw(record)
        item: dict[str, Any] = {"index": number, "aug_seed": seed}
        where = f"{self.source}: sample {number}"
        try:
            for m in self.columns:
                value = values.get(m)
                item[m] = None if is_missing(value) else load_sample(m, value, None, self.limits, seed * 1_000_003 + number)
            if self.has_labels:
                item["label"] = self._encode_label(raw_label)
        except Exception as err:  # noqa: BLE001 - any decoding failure names the sample
            raise DataError(f"{where}: {type(err).__name__}: {err}") from err
        return item


class StreamingLoader(DataLoader):
    """A DataLoader over a `StreamingDataset` that places batches on `device` and forwards epochs/positions."""

    device: Any = None

    def set_epoch(self, epoch: int) -> None:
        """The dataset's epoch (its shard order and shuffling)."""
        self.dataset.set_epoch(epoch)

    def continue_epoch(self, epoch: int, batches: int) -> StreamingLoader:
        """This loader, continuing `epoch` after `batches` batches (their samples are not decoded)."""
        self.dataset.set_position(epoch, batches)
        return self

    def __iter__(self) -> Iterator[Any]:
        for batch in super().__iter__():
            yield to_device(batch, self.device) if self.device is not None else batch


def stream_loader(dataset: StreamingDataset, collate_fn: Callable, num_workers: int) -> StreamingLoader:
    """The training loader of a stream (batches of ``dataset.batch_size``)."""
    generator = torch.Generator().manual_seed(dataset.seed)  # worker seeds come from here, not the global RNG
    return StreamingLoader(dataset, batch_size=dataset.batch_size, collate_fn=collate_fn, num_workers=num_workers,
                           persistent_workers=False, generator=generator)


class StreamingSplits(DataSplits):
    """Splits whose training part is a `StreamingDataset` (left out of `items`, so `write_splits` skips it)."""

    def items(self) -> list[tuple[str, Any]]:
        """(name, dataset) for the map-style splits that exist."""
        return [(n, d) for n, d in (("validation", self.validation), ("test", self.test)) if d is not None]

    def sizes(self) -> dict[str, int]:
        """Samples per split (the stream: per epoch, over all processes)."""
        return {"train": self.train.total, **{n: len(d) for n, d in self.items()}}

    def skip_report(self) -> dict:
        """Skip counts per split (JSON-ready)."""
        return {"train": self.train.skipped.to_dict(), **{n: d.skipped.to_dict() for n, d in self.items()}}


def streaming_splits(cfg: Any, columns: dict[str, str], label_column: Optional[str], label_type: Optional[str],
                     rank: int = 0, world: int = 1) -> StreamingSplits:
    """A `StreamingSplits` from an `ExperimentConfig`: ``data.webdataset`` or ``data.stream_files`` for training,
    ``data.validation`` / ``data.test`` manifests for evaluation (with the stream's label vocabulary)."""

    data = cfg.data
    notes: list[str] = []
    if data.webdataset:
        files = expand_pattern(data.webdataset)
        index = read_index(os.path.dirname(files[0]))
        counts = {s["file"]: int(s["count"]) for s in index["shards"]}
        unknown = [f for f in files if os.path.basename(f) not in counts]
        if unknown:
            raise DataError(f"data.webdataset: {unknown[:3]} not listed in {os.path.dirname(files[0])}/index.json")
        sizes, label_counts, reader = [counts[os.path.basename(f)] for f in files], index.get("label_counts", {}), _tar_records
        names, source = index.get("labels"), data.webdataset
    else:
        files = expand_pattern(data.stream_files)
        label_counts = {}
        sizes = []
        for f in files:
            n, c = count_rows(f, label_column)
            sizes.append(n)
            for k, v in c.items():
                label_counts[k] = label_counts.get(k, 0) + v
        names, reader, source = sorted(label_counts) or None, _file_records, data.stream_files
    vocab = None
    if label_type in ("single_label", "multi_label"):
        names = data.labels or names
        if not names:
            raise DataError(f"{source}: no label vocabulary; set data.labels")
        vocab = LabelVocab(list(names), label_type)
    offsets = np.cumsum([0, *sizes])[:-1].tolist()
    shards = [Shard(f, n, int(o)) for f, n, o in zip(files, sizes, offsets) if n > 0]
    train = StreamingDataset(shards, reader, columns, label_column, label_type, vocab, cfg.train.batch_size,
                             cfg.train.seed, data.shuffle_buffer, rank, world, label_counts, source,
                             MediaLimits.from_config(data))
    notes.append(f"train streamed from {len(shards)} files ({train.total} samples; {train.batches_per_rank} batches "
                 f"per process and epoch over {world} process(es), shuffle buffer {train.buffer})")

    def manifest(path: Optional[str]) -> Optional[MultimodalDataset]:
        if not path:
            return None
        return MultimodalDataset(read_manifest(path), columns, label_column, label_type, vocab,
                                 os.path.dirname(os.path.abspath(path)), path, data.on_bad_sample,
                                 data.required_modalities, data.multi_label_separator, data.validate, progress=False,
                                 limits=MediaLimits.from_config(data))

    return StreamingSplits(train, manifest(data.validation), manifest(data.test), vocab, notes)
