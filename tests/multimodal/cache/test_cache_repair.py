"""Feature cache under damage: a truncated or garbage shard, an empty or garbage index, an index without its
shard, a damaged meta.json are reported with the folder and recomputed; orphan shards are removed; an item that
cannot be read is named."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from multimodal.cache import FeatureCache
from multimodal.cache.files import ORPHAN_AGE_S
from multimodal.data import DataError
from tests.multimodal.cache.test_cache import CountingImageEncoder


def _built(tmp_path, images):  # noqa: F811
    enc = CountingImageEncoder()
    cache = FeatureCache(enc, tmp_path / "cache", shard_size=2)
    keys = cache.build(images, batch_size=2)
    assert enc.calls == len(images)
    return cache, keys, cache.load(keys)


def _shards(cache):
    return sorted(cache.directory.glob("shard-*.safetensors"))


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


DAMAGE = {
    "truncated shard": lambda shard: _truncate(shard),
    "garbage shard": lambda shard: shard.write_bytes(os.urandom(shard.stat().st_size)),
    "empty index": lambda shard: shard.with_suffix(".json").write_text(""),
    "truncated index": lambda shard: _truncate(shard.with_suffix(".json")),
    "binary index": lambda shard: shard.with_suffix(".json").write_bytes(b"\xff\xfe\x00garbage"),
    "index of another shard": lambda shard: shard.with_suffix(".json").write_text('{"keys": ["nope"], "tokens": true}'),
    "shard deleted": lambda shard: shard.unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_shard_or_index_is_reported_and_recomputed(tmp_path, images, damage):  # noqa: F811
    cache, keys, reference = _built(tmp_path, images)
    victim = _shards(cache)[0]
    held = len(json.loads(victim.with_suffix(".json").read_text())["keys"])
    DAMAGE[damage](victim)
    enc = CountingImageEncoder()
    reopened = FeatureCache(enc, tmp_path / "cache", shard_size=2)
    assert len(reopened.repairs) == 1
    note = reopened.repairs[0]
    assert note.startswith(f"feature cache {reopened.directory}: ") and victim.stem in note
    assert not victim.exists() and not victim.with_suffix(".json").exists()
    assert reopened.build(images, batch_size=2) == keys
    assert enc.calls == held  # the items of the damaged shard, encoded again
    again = reopened.load(keys)
    assert torch.equal(again.pooled, reference.pooled) and torch.equal(again.tokens, reference.tokens)
    assert FeatureCache(CountingImageEncoder(), tmp_path / "cache").repairs == []  # repaired for good


def test_damaged_meta_is_rewritten(tmp_path, images):  # noqa: F811
    cache, _, _ = _built(tmp_path, images)
    (cache.directory / "meta.json").write_text("")
    reopened = FeatureCache(CountingImageEncoder(), tmp_path / "cache")
    assert reopened.repairs == [f"feature cache {reopened.directory}: meta.json is damaged (JSONDecodeError); rewritten"]
    assert len(reopened) == len(images)  # the shards are untouched


def test_orphan_shards_and_temporary_files_are_removed_once_old(tmp_path, images):  # noqa: F811
    cache, keys, _ = _built(tmp_path, images)
    orphan = _shards(cache)[0]
    stale_index = orphan.with_suffix(".json").read_text()
    orphan.with_suffix(".json").unlink()  # as a kill between writing the shard and its index leaves it
    stale_tmp = cache.directory / ".shard-x.safetensors.tmp"
    stale_tmp.write_bytes(b"half")
    young = cache.directory / "shard-young.safetensors"
    young.write_bytes(b"being written")
    old = time.time() - ORPHAN_AGE_S - 5
    for p in (orphan, stale_tmp):
        os.utime(p, (old, old))
    reopened = FeatureCache(CountingImageEncoder(), tmp_path / "cache")
    assert not orphan.exists() and not stale_tmp.exists()
    assert young.exists()  # may be another process's write in progress
    assert sum("no index" in n and orphan.name in n for n in reopened.repairs) == 1
    assert len(reopened) == len(images) - len(json.loads(stale_index)["keys"])


def test_shard_damaged_after_opening_is_named(tmp_path, images):  # noqa: F811
    cache, keys, _ = _built(tmp_path, images)
    reader = FeatureCache(CountingImageEncoder(), tmp_path / "cache")
    victim = _shards(cache)[0]
    _truncate(victim)
    bad = [k for k in keys if reader._index[k][0] == victim.name]
    with pytest.raises(DataError, match=rf"feature cache {reader.directory}: shard {victim.name} cannot be read"):
        reader.load(bad)


def test_unreadable_source_is_named(tmp_path, images):  # noqa: F811
    cache = FeatureCache(CountingImageEncoder(), tmp_path / "cache")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    with pytest.raises(DataError, match=rf"feature cache .*: cannot read image item '{corrupt}': UnidentifiedImageError"):
        cache.build([images[0], str(corrupt)])
    errors: dict[int, str] = {}
    keys = cache.build([images[0], str(corrupt), str(tmp_path / "missing.png")], errors=errors)
    assert sorted(errors) == [1, 2] and "UnidentifiedImageError" in errors[1] and "not found" in errors[2]
    assert cache.has(keys[0]) and not cache.has(keys[1]) and keys[2] == "__unreadable__"
