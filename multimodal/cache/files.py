"""The feature cache's files on disk: written atomically, checked when read, repaired when damaged.

A cache folder (``<root>/<modality>-<fingerprint[:24]>/``, see `multimodal.cache.keys`) holds ``meta.json`` and pairs ``shard-<id>.safetensors`` + ``shard-<id>.json``. The shard is
written first (to a temporary name, then renamed), its index second; the index records the keys, whether
tokens are stored, and the shard's size in bytes. `scan` reads every index and checks its shard once per
process: the index must parse and have the right shape, and the shard must have the recorded size, a
safetensors header that parses and a ``<key>/pooled`` tensor for every key. A damaged pair is deleted (index
first) and reported with the folder, so its items count as missing and are encoded again. A shard with no
index, an index with no shard, and temporary files are deleted once they are older than `ORPHAN_AGE_S` (a
younger one may be another process's write in progress).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from encoders.base import EncoderOutput
from multimodal.files import write_text

log = logging.getLogger("multimodal.cache")

ORPHAN_AGE_S = 600.0
"""A shard without an index (or a temporary file) younger than this may still be being written."""


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def write_meta(directory: Path, meta: dict[str, Any]) -> Optional[str]:
    """Write ``meta.json`` unless a readable one with this fingerprint exists; returns a repair note, if any."""
    path = directory / "meta.json"
    note = None
    if path.exists():
        try:
            if json.loads(path.read_text(encoding="utf-8")).get("fingerprint") == meta["fingerprint"]:
                return None
            note = f"feature cache {directory}: meta.json describes another encoder; rewritten"
        except (OSError, UnicodeDecodeError, ValueError, AttributeError) as err:
            note = f"feature cache {directory}: meta.json is damaged ({type(err).__name__}); rewritten"
    write_text(path, json.dumps(meta, indent=1))
    return note


def write_shard(directory: Path, tensors: dict[str, torch.Tensor], keys: list[str], with_tokens: bool) -> str:
    """Write one shard and then its index, each atomically; returns the shard's file name."""
    shard = f"shard-{uuid.uuid4().hex}"
    tmp = directory / f".{shard}.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, directory / f"{shard}.safetensors")
    size = os.path.getsize(directory / f"{shard}.safetensors")
    write_text(directory / f"{shard}.json", json.dumps({"keys": keys, "tokens": with_tokens, "bytes": size}))
    return f"{shard}.safetensors"


def read_index(index_file: Path) -> dict[str, Any]:
    """A shard index, checked for shape; ValueError saying what is wrong."""
    try:
        info = json.loads(index_file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"index {index_file.name} is not text ({err.reason})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"index {index_file.name} is not valid JSON ({err.msg} at char {err.pos}"
                         f"{', empty file' if not err.doc.strip() else ''})") from None
    keys = info.get("keys") if isinstance(info, dict) else None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"index {index_file.name} has no list of keys")
    if not isinstance(info.get("tokens", False), bool) or not isinstance(info.get("bytes", 0), int):
        raise ValueError(f"index {index_file.name}: 'tokens' or 'bytes' has the wrong type")
    return info


def check_shard(shard_file: Path, info: dict[str, Any]) -> None:
    """ValueError unless the shard has the size its index records and a tensor for every key."""
    size = shard_file.stat().st_size
    if "bytes" in info and size != info["bytes"]:
        raise ValueError(f"shard {shard_file.name} has {size} bytes, its index says {info['bytes']} (truncated?)")
    try:
        with safe_open(str(shard_file), framework="pt", device="cpu") as f:
            names = set(f.keys())
    except Exception as err:  # noqa: BLE001 - any header that does not parse makes the shard unusable
        raise ValueError(f"shard {shard_file.name} cannot be read ({type(err).__name__}: {err})") from None
    missing = [k for k in info["keys"] if f"{k}/pooled" not in names or (info.get("tokens") and f"{k}/tokens" not in names)]
    if missing:
        raise ValueError(f"shard {shard_file.name} lacks {len(missing)} of the {len(info['keys'])} entries its index lists")


def _old(path: Path, now: float) -> bool:
    try:
        return now - path.stat().st_mtime > ORPHAN_AGE_S
    except FileNotFoundError:
        return False


def scan(directory: Path, checked: set[str]) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """(shard file name, index) of every intact shard in `directory`, and one note per file repaired.

    Shards named in `checked` were checked earlier by this process (shards are never modified) and are not
    opened again; newly checked ones are added to it. Damaged pairs and old orphans are deleted."""
    good: list[tuple[str, dict[str, Any]]] = []
    notes: list[str] = []
    now = time.time()
    indexed = set()
    for index_file in sorted(directory.glob("shard-*.json")):
        shard_file = index_file.with_suffix(".safetensors")
        indexed.add(shard_file.name)
        try:
            info = read_index(index_file)
            if shard_file.name not in checked:
                if not shard_file.exists():
                    raise FileNotFoundError(f"index {index_file.name} has no shard {shard_file.name}")
                check_shard(shard_file, info)
                checked.add(shard_file.name)
        except FileNotFoundError as err:
            if not index_file.exists():
                continue  # another process removed this pair meanwhile
            notes.append(f"feature cache {directory}: {err}; index removed, its entries will be recomputed")
            _unlink(index_file)
            continue
        except ValueError as err:
            notes.append(f"feature cache {directory}: {err}; shard and index removed, their entries will be recomputed")
            _unlink(index_file)  # index first: nobody reads a shard through it any more
            _unlink(shard_file)
            continue
        good.append((shard_file.name, info))
    for path in _orphans(directory, indexed):
        if _old(path, now):
            _unlink(path)
            notes.append(f"feature cache {directory}: removed {path.name} (no index: left by an interrupted write)")
    for note in notes:
        log.warning(note)
    return good, notes


def _orphans(directory: Path, indexed: Iterable[str]) -> list[Path]:
    indexed = set(indexed)
    shards = {p for p in directory.glob("shard-*.safetensors") if p.name not in indexed}
    return sorted(shards | set(directory.glob(".*.tmp")) | set(directory.glob("*.tmp")))


def trim_entry(out: EncoderOutput, i: int) -> dict[str, torch.Tensor]:
    """Item `i` of a batch as stored: tokens and mask trimmed after the last real position."""
    entry = {"pooled": out.pooled[i]}
    if out.tokens is not None:
        tokens = out.tokens[i]
        if out.mask is not None:
            real = torch.nonzero(out.mask[i]).flatten()
            length = int(real.max()) + 1 if real.numel() else 1
            entry["tokens"] = tokens[:length]
            entry["mask"] = out.mask[i][:length].to(torch.uint8)
        else:
            entry["tokens"] = tokens
    return entry


def stack_outputs(keys: list[str], outs: list[EncoderOutput]) -> tuple[list[str], EncoderOutput]:
    """Batches of encoder outputs (their token lengths may differ: text padding) as one padded batch for a shard."""
    tensors_keys: list[str] = []
    pooled, tokens, masks = [], [], []
    for out in outs:
        n = out.pooled.shape[0]
        for i in range(n):
            entry = trim_entry(out, i)
            pooled.append(entry["pooled"])
            tokens.append(entry.get("tokens"))
            masks.append(entry.get("mask"))
        tensors_keys.extend(keys[len(tensors_keys) : len(tensors_keys) + n])
    max_t = max((t.shape[0] for t in tokens if t is not None), default=0)
    padded_tokens = padded_mask = None
    if tokens and tokens[0] is not None:
        d = tokens[0].shape[-1]
        padded_tokens = torch.zeros(len(tokens), max_t, d, dtype=tokens[0].dtype)
        padded_mask = torch.zeros(len(tokens), max_t, dtype=torch.bool)
        for i, (t, m) in enumerate(zip(tokens, masks)):
            padded_tokens[i, : t.shape[0]] = t
            padded_mask[i, : t.shape[0]] = m.bool() if m is not None else True
        has_mask = any(m is not None for m in masks)
        if not has_mask and all(t.shape[0] == max_t for t in tokens):
            padded_mask = None
    return tensors_keys, EncoderOutput(torch.stack(pooled), padded_tokens, padded_mask)
