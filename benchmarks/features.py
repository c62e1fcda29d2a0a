"""Frozen features of a dev set from the framework's own encoders, cached as .npz beside the dev sets.

    features = extract("/work/devsets/urbansound/manifest.csv", "audio-mel:tf_efficientnet_lite0", {"n_mels": 128})
    features["X"], features["label"], features["group"], features["split"]

The cache key is the manifest's content, the encoder spec and its options, so a rebuilt set or another front
end never reuses stale features. Files live under ``<cache root>/features/<set>/`` (the cache root of
`benchmarks.devsets_io.cache_root`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from benchmarks.devsets_io import cache_root
from encoders import create_encoder
from multimodal.data.media import load_audio, load_image

COLUMN_OF_KIND = {"text": "text", "image": "image", "audio": "audio", "audio-mel": "audio"}
DEFAULT_SPECS = {"text": "text:sentence-transformers/all-MiniLM-L6-v2", "image": "image:tf_efficientnet_lite0",
                 "audio": "audio-mel:tf_efficientnet_lite0"}


def cache_key(manifest: str, spec: str, options: dict) -> str:
    """Hex digest of the manifest's bytes, the encoder spec and its options."""
    digest = hashlib.sha256()
    with open(manifest, "rb") as f:
        digest.update(f.read())
    digest.update(json.dumps({"spec": spec, "options": options}, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def load_cells(cells: list, column: str, base_dir: str) -> list:
    """Decode manifest cells of one column: strings, PIL images or (waveform, rate) tuples."""
    if column == "text":
        return [str(v) for v in cells]
    loader = load_image if column == "image" else load_audio
    return [loader(v, base_dir) for v in cells]


@torch.no_grad()
def encode_rows(encoder: torch.nn.Module, cells: list, column: str, base_dir: str, batch_size: int) -> np.ndarray:
    """Pooled encoder outputs [N, D] for the manifest cells of `column`, decoded batch by batch, in eval mode."""
    encoder.eval()
    chunks = []
    for start in range(0, len(cells), batch_size):
        inputs = encoder.preprocess(load_cells(cells[start:start + batch_size], column, base_dir))
        chunks.append(encoder(inputs).pooled.float().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, encoder.output_dim), dtype=np.float32)


def pooled_rows(encoder: torch.nn.Module, cells: list, column: str, base_dir: str,
                batch_size: int) -> dict[str, np.ndarray]:
    """{"X": the pooled encoder outputs} of the manifest cells (what `extract` caches by default)."""
    return {"X": encode_rows(encoder, cells, column, base_dir, batch_size).astype(np.float32)}


def extract(manifest: str, spec: str, options: dict | None = None, root: str | None = None,
            batch_size: int = 32, threads: int = 2, outputs: Callable[..., dict] = pooled_rows,
            tag: str = "") -> dict[str, np.ndarray]:
    """Features of every manifest row with encoder `spec` (+ options), from the cache when present.

    `outputs(encoder, cells, column, base_dir, batch_size)` gives the arrays to cache (default: the pooled
    features as "X"); another one needs its own `tag`, which names the file and enters the cache key.
    """
    options = dict(options or {})
    set_name = os.path.basename(os.path.dirname(os.path.abspath(manifest)))
    kind = spec.split(":", 1)[0]
    if kind not in COLUMN_OF_KIND:
        raise ValueError(f"no manifest column for encoder kind {kind!r} (spec {spec!r})")
    column = COLUMN_OF_KIND[kind]
    folder = os.path.join(cache_root(root), "features", set_name)
    key = cache_key(manifest, spec, {**options, "outputs": tag} if tag else options)
    path = os.path.join(folder, f"{kind}{'-' + tag if tag else ''}-{key}.npz")
    if os.path.exists(path):
        with np.load(path, allow_pickle=False) as cached:
            return dict(cached)
    table = pd.read_csv(manifest)
    if column not in table.columns:
        raise ValueError(f"{manifest}: no {column!r} column for encoder {spec!r}")
    torch.set_num_threads(threads)
    start = time.perf_counter()
    encoder = create_encoder(spec, **options)
    arrays = outputs(encoder, table[column].tolist(), column, os.path.dirname(os.path.abspath(manifest)), batch_size)
    out = {**arrays, "label": table["label"].astype(str).to_numpy(),
           "split": table["split"].astype(str).to_numpy(),
           "group": (table["group"].astype(str) if "group" in table else pd.Series([""] * len(table))).to_numpy(),
           "seconds": np.array(time.perf_counter() - start)}
    os.makedirs(folder, exist_ok=True)
    np.savez(path + ".tmp.npz", **{k: (v.astype(str) if v.dtype == object else v) for k, v in out.items()})
    os.replace(path + ".tmp.npz", path)
    return out


def modality_specs(manifest: str) -> dict[str, str]:
    """The packaged encoder spec for each media column the manifest has (text, image, audio)."""
    columns = pd.read_csv(manifest, nrows=1).columns
    return {m: DEFAULT_SPECS[m] for m in ("text", "image", "audio") if m in columns}


def subset_manifest(manifest: str, per_set: int, seed: int = 0) -> str:
    """A label-stratified, fixed subset of `per_set` rows written beside the manifest (reused when present)."""
    from sklearn.model_selection import train_test_split

    out = os.path.join(os.path.dirname(manifest), f"frontend_subset_{per_set}_{seed}.csv")
    if os.path.exists(out):
        return out
    table = pd.read_csv(manifest)
    if per_set < len(table):
        table, _ = train_test_split(table, train_size=per_set, stratify=table["label"], random_state=seed)
    table.sort_index().to_csv(out, index=False)
    return out
