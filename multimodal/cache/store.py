"""`FeatureCache`: the features of one frozen encoder on disk, filled once and read by content key.

The folder (``<root>/<modality>-<fingerprint[:24]>/``, see `multimodal.cache.keys`) holds shards written by
`multimodal.cache.files`; the cache keeps an index of which shard holds which key. `build` encodes what is
missing (`multimodal.cache.encode`), sharing the work between processes; `load` batches entries back into an
`EncoderOutput`, tokens re-padded with their mask. The precision the tower runs in (`multimodal.cache.modes`) is
part of the key: bf16 and fp32 features live in different folders. An fp32 fill may run the tower in ONNX Runtime
(`multimodal.cache.ort`, ``backend``), parity-checked against torch, into the same fp32 folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import safe_open

from encoders.base import Encoder, EncoderOutput, jsonable
from multimodal.cache.encode import agreement_on, encode_items, parity_on
from multimodal.cache.files import log, scan, trim_entry, write_meta, write_shard
from multimodal.cache.keys import ABSENT, UNREADABLE, content_key, encoder_fingerprint, encoder_key_parts
from multimodal.cache.modes import MIN_BF16_COSINE, check_precision, first_choice
from multimodal.cache.ort import (
    DEFAULT_BACKEND,
    GRAPH_FILE,
    MAX_DIFF,
    MIN_COSINE,
    OrtTower,
    check_backend,
    open_tower,
    within_tolerance,
)
from multimodal.data.manifest import DataError
from multimodal.data.media import load_sample


class FeatureCache:
    """Features of one frozen encoder, stored on disk under its fingerprint and looked up by content key."""

    def __init__(
        self,
        encoder: Encoder,
        root: str | os.PathLike,
        store_tokens: bool = True,
        dtype: torch.dtype = torch.float32,
        shard_size: int = 2048,
        precision: str = "fp32",
        backend: str = DEFAULT_BACKEND,
    ) -> None:
        self._root = root
        self.encoder = encoder
        self.modality = encoder.modality
        self.store_tokens = bool(store_tokens)
        self.dtype = dtype
        self.shard_size = int(shard_size)
        self.requested_precision = check_precision(precision)
        self.backend = check_backend(backend, precision)
        self.tower: Optional[OrtTower] = None  # the ORT session once a fill has checked it (`_check_ort`)
        self._backend_open = self.backend != "torch"  # the backend is decided by the first fill with work to do
        self.repairs: list[str] = []  # what was found damaged or orphaned and removed, one line each
        self.hits = 0
        self.misses = 0
        self._tower_parts = encoder_key_parts(encoder)
        device = next(encoder.parameters()).device if any(True for _ in encoder.parameters()) else "cpu"
        self._open(first_choice(precision, device))
        # "auto" chose bf16 from the hardware alone: the first fill checks it against fp32 (`_keep_bf16`).
        self._unchecked = precision == "auto" and self.precision == "bf16"

    def _open(self, precision: str) -> None:
        """Point the cache at the folder of the tower's features in `precision` and read its index."""
        self.precision = precision
        self.key_parts = {**self._tower_parts, "precision": precision}
        self.fingerprint = encoder_fingerprint(self.encoder, self.key_parts)
        self.directory = Path(self._root) / f"{self.modality}-{self.fingerprint[:24]}"
        self.directory.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, tuple[str, bool]] = {}
        self._handles: dict[str, Any] = {}
        self._checked: set[str] = set()  # shards this process has verified (they are never modified)
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
        state["tower"] = None  # an ONNX Runtime session does not pickle; workers never encode
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

    def _missing(self, keys: list[str], sources: Sequence[Any], accelerator: Any) -> list[tuple[str, Any]]:
        """(key, source) of every distinct readable item not stored yet, the same list on every process."""
        if accelerator is not None and accelerator.num_processes > 1:
            # Every rank must split the *same* missing list: read the index only while nobody writes.
            accelerator.wait_for_everyone()
            self.refresh()
            accelerator.wait_for_everyone()
        todo: dict[str, Any] = {}
        for key, src in zip(keys, sources):
            if key != UNREADABLE and not self.has(key) and key not in todo:
                todo[key] = src
        return list(todo.items())

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
        keys, failed = [], {}
        for i, src in enumerate(sources):
            try:
                keys.append(content_key(self.modality, src))
            except (OSError, TypeError, ValueError) as err:
                keys.append(UNREADABLE)
                failed[i] = f"{type(err).__name__}: {err}"
        rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
        todo = self._missing(keys, sources, accelerator)
        checked: set[str] = set()  # encoded (and stored by the first process) while checking bf16 against fp32
        if self._unchecked and todo:
            checked = self._check_bf16(todo, loader or load_sample, device, rank == 0) or set()
            todo = [(k, s) for k, s in self._missing(keys, sources, accelerator) if k not in checked]
        if self._backend_open and todo and self.precision == "fp32":
            checked |= self._check_ort(todo, loader or load_sample, device, accelerator)
            todo = [(k, s) for k, s in self._missing(keys, sources, accelerator) if k not in checked]
        self.misses += len(todo) + len(checked)
        self.hits += len(keys) - len(todo) - len(checked) - len(failed)
        unreadable = encode_items(self.encoder, todo[rank::world], self.add, batch_size=batch_size,
                                  shard_size=self.shard_size, loader=loader or load_sample, device=device,
                                  show_progress=show_progress and rank == 0, precision=self.precision,
                                  tower=self.tower)
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

    def _check_bf16(self, todo: list[tuple[str, Any]], loader: Callable[[str, Any], Any],
                    device: Optional[torch.device | str], store: bool) -> Optional[set[str]]:
        """Encode the first items to fill in bf16 and fp32 (every process the same items). When they agree, keep
        bf16, store those items' bf16 features (when `store`) and return their keys; otherwise switch the cache to
        fp32 and return None. Says once which precision the fill uses."""
        self._unchecked = False
        checked = agreement_on(self.encoder, todo, loader, device)
        if checked is None:
            return set()
        cosine, keys, bf16 = checked
        if cosine >= MIN_BF16_COSINE:
            log.info("feature cache: %s features in bf16 (native bf16; agreement with fp32 on the first items: "
                     "cosine %.4f)", self.modality, cosine)
            if store:
                self.add(keys, bf16)
            return set(keys)
        log.warning("feature cache: %s features in fp32: in bf16 they differ from fp32 (cosine %.4f < %.2f on the "
                    "first items); data.feature_cache_precision=fp32 skips this check", self.modality, cosine,
                    MIN_BF16_COSINE)
        self._open("fp32")
        return None

    def _check_ort(self, todo: list[tuple[str, Any]], loader: Callable[[str, Any], Any],
                   device: Optional[torch.device | str], accelerator: Any) -> set[str]:
        """Open the tower's ORT session for this fill (`open_tower`: exported by the first process, the others wait)
        and compare it with torch fp32 on the first items (every process the same items). Keep it within the
        tolerance, else fill in torch; says once which. Stores those items' torch features (first process) and
        returns their keys."""
        self._backend_open = False
        first = accelerator is None or accelerator.process_index == 0
        if accelerator is not None and accelerator.num_processes > 1:
            # One export: the first process writes tower.onnx while the others wait, then they load it. A failure
            # is raised after the barrier (the others meet it too), so no process waits forever.
            failure: Optional[Exception] = None
            if first:
                try:
                    tower = open_tower(self.encoder, self.directory, self.backend, len(todo), device)
                except Exception as err:  # noqa: BLE001 - re-raised below, after the barrier
                    failure = err
            accelerator.wait_for_everyone()
            if failure is not None:
                raise failure
        if accelerator is None or accelerator.num_processes == 1:
            tower = open_tower(self.encoder, self.directory, self.backend, len(todo), device)
        elif not first:  # only what the first process exported: its choice (no file: torch) holds for all
            exported = (self.directory / GRAPH_FILE).exists()
            tower = open_tower(self.encoder, self.directory, self.backend, len(todo), device) if exported else None
        if tower is None:
            return set()
        try:
            checked = parity_on(self.encoder, tower, todo, loader, device)
        except Exception as err:  # noqa: BLE001 - the graph rejects these inputs: fill in torch
            log.warning("feature cache: %s features in torch: ONNX Runtime failed on the first items (%s: %s)",
                        self.modality, type(err).__name__, err)
            return set()
        if checked is None:
            return set()
        diff, cosine, keys, reference = checked
        if within_tolerance(diff, cosine):
            log.info("feature cache: %s features by ONNX Runtime (parity with torch fp32 on the first items: "
                     "relative max diff %.2g, cosine %.7f)", self.modality, diff, cosine)
            self.tower = tower
        else:
            log.warning("feature cache: %s features in torch: ONNX Runtime differs from torch fp32 on the first items "
                        "(relative max diff %.2g > %.0e or cosine %.7f < %s)", self.modality, diff, MAX_DIFF, cosine,
                        MIN_COSINE)
        if first:
            self.add(keys, reference)
        return set(keys)

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
