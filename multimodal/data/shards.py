"""WebDataset tar shards written from a manifest, and the shard index the streaming loader reads.

``write_shards(manifest, output_dir)`` checks every row as `MultimodalDataset` does (a bad row names the
manifest, row and file; ``on_bad_sample="skip"`` drops and counts it) and stores each sample as the files
of one tar member group: ``<key>.txt`` (text), ``<key>.image.<ext>`` / ``<key>.audio.<ext>`` (the original
file bytes, decoded later in the loader workers) and ``<key>.json`` (label, row number, other modalities).
``index.json`` lists the shards with their sample counts, the label vocabulary and label counts, so a
loader can balance ranks and size epochs without reading the tars.

    multimodal-write-shards --manifest data/train.csv --output shards/ --samples-per-shard 1000
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Optional

from multimodal.data.dataset import DataError, MultimodalDataset
from multimodal.data.labels import LabelVocab
from multimodal.data.limits import MediaLimits, add_limit_options, limits_from_args
from multimodal.data.manifest import cell, is_missing, read_manifest
from multimodal.data.media import FILE_MODALITIES, cell_path
from multimodal.files import write_json

INDEX_NAME = "index.json"
SHARD_PATTERN = "shard-%06d.tar"


def _file_member(modality: str, value: Any, base_dir: Optional[str]) -> tuple[str, bytes]:
    path = cell_path(value, base_dir)
    if path is None:
        raise DataError(f"{modality}: in-memory samples cannot be written to shards; give file paths")
    ext = os.path.splitext(path)[1].lstrip(".").lower() or "bin"
    with open(path, "rb") as f:
        return f"{modality}.{ext}", f.read()


def _record(dataset: MultimodalDataset, pos: int, base_dir: str) -> tuple[dict[str, Any], Any]:
    """The tar members of dataset item `pos` (text, original media file bytes, ``json`` metadata) and its raw label."""
    row = dataset.row(pos)
    sample: dict[str, Any] = {"__key__": f"{pos:09d}"}
    meta: dict[str, Any] = {"row": dataset.row_ids[dataset.indices[pos]], "present": {}}
    for modality, column in dataset.columns.items():
        value = cell(row[column])
        meta["present"][modality] = not is_missing(value)
        if is_missing(value):
            continue
        if modality == "text":
            sample["txt"] = str(value)
        elif modality in FILE_MODALITIES:
            name, data = _file_member(modality, value, base_dir)
            sample[name] = data
        else:
            meta.setdefault("values", {})[modality] = value
    raw = cell(row[dataset.label_column]) if dataset.has_labels else None
    if dataset.has_labels:
        meta["label"] = raw
    sample["json"] = json.dumps(meta).encode()
    return sample, raw


def write_shards(
    manifest: str,
    output_dir: str,
    columns: dict[str, str],
    label_column: Optional[str] = "label",
    label_type: Optional[str] = "single_label",
    samples_per_shard: int = 1000,
    on_bad_sample: str = "error",
    labels: Optional[list[str]] = None,
    limits: Optional[MediaLimits] = None,
) -> dict:
    """Write `manifest`'s rows as tar shards plus ``index.json`` under `output_dir`; returns the index. Rows are
    checked with `limits` (as training will decode them: pass the same ``data.max_*`` values)."""
    import webdataset as wds

    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    rows = read_manifest(manifest)
    base_dir = os.path.dirname(os.path.abspath(manifest))
    vocab = LabelVocab(labels, label_type) if labels else None
    dataset = MultimodalDataset(rows, columns, label_column, label_type, vocab, base_dir, manifest, on_bad_sample,
                                progress=False, limits=limits)
    os.makedirs(output_dir, exist_ok=True)
    counts: list[int] = []
    label_counts: dict[str, int] = {}
    with wds.ShardWriter(os.path.join(output_dir, SHARD_PATTERN), maxcount=samples_per_shard, verbose=0) as sink:
        for pos in range(len(dataset)):
            sample, raw = _record(dataset, pos, base_dir)
            for name in (raw if isinstance(raw, list) else [raw]) if dataset.has_labels else []:
                label_counts[str(name)] = label_counts.get(str(name), 0) + 1
            sink.write(sample)
            shard = sink.shard - 1
            while len(counts) <= shard:
                counts.append(0)
            counts[shard] += 1
    index = {
        "format": 1,
        "source": os.path.abspath(manifest),
        "columns": dataset.columns,
        "label_type": dataset.label_type,
        "labels": dataset.vocab.names if dataset.vocab is not None else None,
        "label_counts": label_counts,
        "shards": [{"file": SHARD_PATTERN % i, "count": c} for i, c in enumerate(counts)],
        "num_samples": sum(counts),
        "skipped": dataset.skipped.to_dict(),
    }
    write_json(os.path.join(output_dir, INDEX_NAME), index)
    return index


def read_index(directory: str) -> dict:
    """The ``index.json`` of a shard folder (DataError naming the file when missing or malformed)."""
    path = os.path.join(directory, INDEX_NAME)
    if not os.path.isfile(path):
        raise DataError(f"{path} not found: write the shards with multimodal-write-shards (it writes the index)")
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
        {s["file"]: int(s["count"]) for s in index["shards"]}  # noqa: B018 - validates the listing
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a valid shard index ({type(err).__name__}: {err})") from None
    return index


def main(argv: Optional[list[str]] = None) -> int:
    """``multimodal-write-shards``: a manifest to WebDataset tar shards; user errors exit with the message."""
    parser = argparse.ArgumentParser(description="Write a manifest (CSV/JSONL/Parquet) as WebDataset tar shards.")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--output", required=True, help="folder for shard-NNNNNN.tar and index.json")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--audio-column", default=None)
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--task", default="single_label", choices=["single_label", "multi_label", "regression", "none"])
    parser.add_argument("--on-bad-sample", default="error", choices=["error", "skip"])
    add_limit_options(parser)
    args = parser.parse_args(argv)
    columns = {m: c for m, c in (("text", args.text_column), ("image", args.image_column),
                                  ("audio", args.audio_column)) if c and c.lower() != "none"}
    label_type = None if args.task == "none" else args.task
    try:
        index = write_shards(args.manifest, args.output, columns, args.label_column if label_type else None,
                             label_type, args.samples_per_shard, args.on_bad_sample, limits=limits_from_args(args, parser))
    except (DataError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"wrote {index['num_samples']} samples in {len(index['shards'])} shards to {os.path.abspath(args.output)}"
          + (f" (skipped {index['skipped']['total']})" if index["skipped"]["total"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
