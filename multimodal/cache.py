"""On-disk cache of frozen-encoder features, so a locked tower encodes each item once.

An entry is keyed by two things:

* the **encoder fingerprint**: SHA-256 over the encoder's `spec`, `get_config()`,
  `preprocess_config()` (image size, max_length, sample rate, ...) and a hash of every tensor in its
  state dict (computed once when the cache is opened). Change any of them and the cache lives in a
  different directory, so stale features are never read.
* the **content key** of the item: SHA-256 of the file's bytes for image/audio paths, of the UTF-8
  text for text, of the pixel/sample buffer for in-memory arrays.

Features are computed with the encoder in eval mode and its **eval-mode preprocessing**
(`get_preprocessor(train=False)`): no random augmentation is applied to cached items. Use the cache
only for frozen encoders you would not augment for anyway.

Layout: ``<root>/<modality>-<fingerprint[:24]>/`` holds ``meta.json`` (the full key parts, for humans)
and shards ``shard-<id>.safetensors`` + ``shard-<id>.json`` (the keys stored in the shard). Shards are
written atomically and never modified, so several processes (DDP ranks) can add shards concurrently.
Tokens are stored trimmed to the last real position (per the encoder's mask) and re-padded on load.

Damage is repaired, not trusted (`multimodal.cache_files`): a shard or index that is truncated, empty or
does not parse is deleted and reported with the folder when the cache is opened, so `build` encodes its items
again; shards left without an index by an interrupted write are removed. An item that cannot be read or
hashed while building is reported by its source (or, through `build`'s `errors`, handed back to the caller).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from torch import nn

from encoders.base import Encoder, EncoderOutput, jsonable
from encoders.image import to_rgb
from multimodal.cache_files import log, scan, stack_outputs, trim_entry, write_meta, write_shard
from multimodal.data.manifest import DataError
from multimodal.data.media import load_sample

ABSENT = "__absent__"
"""Content key of a missing sample; its features are the encoder's output on its neutral placeholder."""
UNREADABLE = "__unreadable__"
"""Key `FeatureCache.build` gives a source it could not hash (a missing or unreadable file); never cached."""

_FILE_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def weights_hash(module: nn.Module) -> str:
    """SHA-256 over every state-dict tensor (name, dtype, shape, bytes), in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def encoder_key_parts(encoder: Encoder) -> dict[str, Any]:
    """Everything that decides what the encoder outputs for an item: spec, configs, weights hash."""
    return {
        "spec": encoder.spec,
        "modality": encoder.modality,
        "config": encoder.get_config(),
        "preprocess": encoder.preprocess_config(),
        "weights": weights_hash(encoder),
    }


def encoder_fingerprint(encoder: Encoder, parts: Optional[dict[str, Any]] = None) -> str:
    """SHA-256 of `encoder_key_parts` (canonical JSON)."""
    parts = encoder_key_parts(encoder) if parts is None else parts
    blob = json.dumps(jsonable(parts), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def file_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, memoised per (path, size, mtime) within the process."""
    p = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(p)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"feature cache: file not found: {p}") from err
    memo_key = (p, st.st_size, st.st_mtime_ns)
    if memo_key not in _FILE_HASH_MEMO:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _FILE_HASH_MEMO[memo_key] = h.hexdigest()
    return _FILE_HASH_MEMO[memo_key]


def content_key(modality: str, source: Any) -> str:
    """Content hash of one item: text content, file bytes for paths, buffer bytes for arrays/images."""
    if source is None:
        return ABSENT
    h = hashlib.sha256()
    if modality == "text":
        if not isinstance(source, str):
            raise TypeError(f"text item must be str, got {type(source).__name__}")
        h.update(b"text\0" + source.encode("utf-8"))
        return h.hexdigest()
    if isinstance(source, (str, os.PathLike)):
        return file_hash(source)
    if isinstance(source, dict):  # `datasets` cells: {"bytes"|"path"} images, {"array", "sampling_rate"} audio
        if source.get("bytes"):
            h.update(b"bytes\0" + bytes(source["bytes"]))
            return h.hexdigest()
        if source.get("array") is not None:
            return content_key(modality, (np.asarray(source["array"], dtype=np.float32), int(source["sampling_rate"])))
        if source.get("path"):
            return file_hash(source["path"])
    if isinstance(source, tuple) and len(source) == 2:  # (waveform, sample_rate)
        wave = np.ascontiguousarray(np.asarray(source[0]))
        h.update(f"wave\0{wave.dtype}\0{wave.shape}\0{int(source[1])}\0".encode())
        h.update(wave.tobytes())
        return h.hexdigest()
    if isinstance(source, np.ndarray):
        arr = np.ascontiguousarray(source)
        h.update(f"array\0{arr.dtype}\0{arr.shape}\0".encode())
        h.update(arr.tobytes())
        return h.hexdigest()
    if isinstance(source, Image.Image):
        # The pixels the encoder sees: palette, transparency and CMYK are resolved by the conversion.
        rgb = to_rgb(source)
        h.update(f"pil\0{rgb.mode}\0{rgb.size}\0".encode())
        h.update(rgb.tobytes())
        return h.hexdigest()
    raise TypeError(f"cannot compute a content key for a {type(source).__name__} {modality} item")


class FeatureCache:
    """Features of one frozen encoder, stored on disk under its fingerprint and looked up by content key."""

    def __init__(
        self,
        encoder: Encoder,
        root: str | os.PathLike,
        store_tokens: bool = True,
        dtype: torch.dtype = torch.float32,
        shard_size: int = 2048,
    ) -> None:
        self.encoder = encoder
        self.modality = encoder.modality
        self.store_tokens = bool(store_tokens)
        self.dtype = dtype
        self.shard_size = int(shard_size)
        self.key_parts = encoder_key_parts(encoder)
        self.fingerprint = encoder_fingerprint(encoder, self.key_parts)
        self.directory = Path(root) / f"{self.modality}-{self.fingerprint[:24]}"
        self.directory.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, tuple[str, bool]] = {}
        self._handles: dict[str, Any] = {}
        self._checked: set[str] = set()  # shards this process has verified (they are never modified)
        self.repairs: list[str] = []  # what was found damaged or orphaned and removed, one line each
        self.hits = 0
        self.misses = 0
        note = write_meta(self.directory, jsonable({"fingerprint": self.fingerprint, **self.key_parts}))
        if note:
            log.warning(note)
            self.repairs.append(note)
        self.refresh()

    # -- index ------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read the shard indexes (after other processes added shards); damaged shards are removed."""
        good, notes = scan(self.directory, self._checked)
        self.repairs.extend(notes)
        for shard, info in good:
            for key in info["keys"]:
                has_tokens = bool(info.get("tokens", False))
                old = self._index.get(key)
                if old is None or (has_tokens and not old[1]):
                    self._index[key] = (shard, has_tokens)

    def __len__(self) -> int:
        return len(self._index)

    def has(self, key: str) -> bool:
        """True if `key` is stored with everything this cache needs (tokens when `store_tokens`)."""
        entry = self._index.get(key)
        return entry is not None and (entry[1] or not self.store_tokens)

    def __contains__(self, key: str) -> bool:
        return self.has(key)

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers only read: they get the index, not the encoder or open file handles.
        state = self.__dict__.copy()
        state["_handles"] = {}
        state["encoder"] = None
        return state

    # -- writing ----------------------------------------------------------------------------------
    def add(self, keys: Sequence[str], output: EncoderOutput) -> None:
        """Store a batch of encoder outputs under their content keys (one new shard)."""
        if len(keys) != output.pooled.shape[0]:
            raise ValueError(f"{len(keys)} keys for a batch of {output.pooled.shape[0]}")
        tensors: dict[str, torch.Tensor] = {}
        stored: list[str] = []
        with_tokens = self.store_tokens and output.tokens is not None
        out = EncoderOutput(output.pooled, output.tokens if with_tokens else None, output.mask if with_tokens else None)
        for i, key in enumerate(keys):
            if key in stored:
                continue
            stored.append(key)
            for name, t in trim_entry(out, i).items():
                t = t.detach().to("cpu")
                tensors[f"{key}/{name}"] = (t.to(self.dtype) if t.is_floating_point() else t).contiguous()
        shard = write_shard(self.directory, tensors, stored, with_tokens)
        self._checked.add(shard)
        for key in stored:
            self._index[key] = (shard, with_tokens)

    @torch.no_grad()
    def build(
        self,
        sources: Sequence[Any],
        batch_size: int = 32,
        loader: Optional[Callable[[str, Any], Any]] = None,
        device: Optional[torch.device | str] = None,
        accelerator: Any = None,
        show_progress: bool = True,
        errors: Optional[dict[int, str]] = None,
    ) -> list[str]:
        """Encode every source whose content key is not cached yet; return the content keys of `sources`.

        `sources` are texts, file paths or raw samples (None = absent). With an `accelerator`, each
        process encodes its share of the missing items and all processes wait for each other. A source that
        cannot be hashed or read raises `DataError` naming it; with `errors`, its position maps to the reason
        there instead (on every process alike) and it stays uncached (key `UNREADABLE` if it could not be hashed).
        """
        loader = loader or load_sample
        keys, failed = [], {}
        for i, src in enumerate(sources):
            try:
                keys.append(content_key(self.modality, src))
            except (OSError, TypeError, ValueError) as err:
                keys.append(UNREADABLE)
                failed[i] = f"{type(err).__name__}: {err}"
        rank, world = 0, 1
        if accelerator is not None:
            rank, world = accelerator.process_index, accelerator.num_processes
        if world > 1:
            # Every rank must split the *same* missing list: read the index only while nobody writes.
            accelerator.wait_for_everyone()
            self.refresh()
            accelerator.wait_for_everyone()
        todo: dict[str, Any] = {}
        for key, src in zip(keys, sources):
            if key != UNREADABLE and not self.has(key) and key not in todo:
                todo[key] = src
        self.misses += len(todo)
        self.hits += len(keys) - len(todo) - len(failed)
        unreadable = self._encode(list(todo.items())[rank::world], batch_size, loader, device, rank, show_progress)
        if world > 1:
            accelerator.wait_for_everyone()
            self.refresh()
        for i, key in enumerate(keys):  # what is still missing could not be read, here or on another process
            if i not in failed and key != ABSENT and not self.has(key):
                failed[i] = unreadable.get(key, "could not be read (by another process; see its message)")
        if failed and errors is None:
            i = min(failed)
            raise DataError(f"feature cache {self.directory}: cannot read {self.modality} item {sources[i]!r}: "
                            f"{failed[i]}")
        if errors is not None:
            errors.update(failed)
        return keys

    def _encode(self, mine: list[tuple[str, Any]], batch_size: int, loader: Callable[[str, Any], Any],
                device: Optional[torch.device | str], rank: int, show_progress: bool) -> dict[str, str]:
        """Encode and store `mine` ((key, source) pairs); returns {key: reason} for the sources that failed to load."""
        unreadable: dict[str, str] = {}
        if not mine:
            return unreadable
        was_training = self.encoder.training
        self.encoder.eval()
        preprocess = self.encoder.get_preprocessor(train=False)
        dev = torch.device(device) if device is not None else next(self.encoder.parameters()).device
        progress = None
        if show_progress and rank == 0 and len(mine) > batch_size:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(mine), desc=f"caching {self.modality} features", leave=False)
        flush_keys: list[str] = []
        flush_outs: list[EncoderOutput] = []
        try:
            for start in range(0, len(mine), batch_size):
                chunk = mine[start : start + batch_size]
                raw, good = [], []
                for k, s in chunk:
                    try:
                        raw.append(None if k == ABSENT else loader(self.modality, s))
                        good.append(k)
                    except Exception as err:  # noqa: BLE001 - any failure to decode makes the item unreadable
                        unreadable[k] = f"{type(err).__name__}: {err}"
                if progress is not None:
                    progress.update(len(chunk))
                if not good:
                    continue
                inputs = {n: t.to(dev) if isinstance(t, torch.Tensor) else t for n, t in preprocess(raw).items()}
                flush_keys.extend(good)
                flush_outs.append(self.encoder(inputs))
                if len(flush_keys) >= self.shard_size:
                    self._flush(flush_keys, flush_outs)
                    flush_keys, flush_outs = [], []
            if flush_keys:
                self._flush(flush_keys, flush_outs)
        finally:
            if progress is not None:
                progress.close()
            self.encoder.train(was_training)
        return unreadable

    def _flush(self, keys: list[str], outs: list[EncoderOutput]) -> None:
        self.add(*stack_outputs(keys, outs))

    # -- reading ----------------------------------------------------------------------------------
    def _handle(self, shard: str) -> tuple[Any, frozenset]:
        """Open handle of a shard and its tensor names (read once: shards are never modified)."""
        if shard not in self._handles:
            f = safe_open(str(self.directory / shard), framework="pt", device="cpu")
            self._handles[shard] = (f, frozenset(f.keys()))
        return self._handles[shard]

    def get(self, key: str) -> dict[str, torch.Tensor]:
        """The stored tensors of one item: ``pooled`` and, when stored, ``tokens`` / ``mask``."""
        if not self.has(key):
            raise KeyError(f"feature cache {self.directory}: no entry for content key {key[:16]}…; run build() first")
        shard, with_tokens = self._index[key]
        try:
            f, names = self._handle(shard)
            entry = {"pooled": f.get_tensor(f"{key}/pooled")}
            if with_tokens and self.store_tokens:
                entry["tokens"] = f.get_tensor(f"{key}/tokens")
                if f"{key}/mask" in names:
                    entry["mask"] = f.get_tensor(f"{key}/mask").bool()
        except Exception as err:  # noqa: BLE001 - the shard changed after it was checked
            raise DataError(f"feature cache {self.directory}: shard {shard} cannot be read ({type(err).__name__}: "
                            f"{err}); it changed after this run checked it. The next run removes it and encodes "
                            "its entries again") from None
        return entry

    def load(self, keys: Sequence[str]) -> EncoderOutput:
        """Batch the cached features of `keys` into one `EncoderOutput` (tokens re-padded with their mask)."""
        entries = [self.get(k) for k in keys]
        pooled = torch.stack([e["pooled"] for e in entries])
        if not entries or "tokens" not in entries[0]:
            return EncoderOutput(pooled, None, None)
        lengths = [e["tokens"].shape[0] for e in entries]
        max_t = max(lengths)
        any_mask = any("mask" in e for e in entries)
        if not any_mask and min(lengths) == max_t:
            return EncoderOutput(pooled, torch.stack([e["tokens"] for e in entries]), None)
        d = entries[0]["tokens"].shape[-1]
        tokens = torch.zeros(len(entries), max_t, d, dtype=entries[0]["tokens"].dtype)
        mask = torch.zeros(len(entries), max_t, dtype=torch.bool)
        for i, e in enumerate(entries):
            n = e["tokens"].shape[0]
            tokens[i, :n] = e["tokens"]
            mask[i, :n] = e["mask"] if "mask" in e else True
        return EncoderOutput(pooled, tokens, mask)
