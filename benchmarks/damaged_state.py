"""Damaged state on disk, kind by kind: checkpoints, the feature cache, and bad data under data.validate=false
(the figures in RELIABILITY.md; `fault_injection.py` measures kills).

1. checkpoint folders: a run saves a checkpoint per step; each case damages the newest one (or adds a torn
   one) and records which checkpoint `resume_from=latest` picks and what it says about the one it skipped;
2. the feature cache: each case damages a built cache, reopens it, and checks that the damage is reported with
   the folder, the lost entries are encoded again and the features equal the originals;
3. bad files under ``data.validate=false``, each with ``on_bad_sample=skip`` (the row must be skipped and
   counted with its row number, here while loading in a DataLoader worker) and ``error`` (a `BadSampleError`
   naming the row and file), once through the live path and once through the feature cache.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/damaged_state.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from common import print_table, write_json  # noqa: E402
from fault_injection import _overrides, make_data  # noqa: E402
from PIL import Image  # noqa: E402

from multimodal import load_config, run  # noqa: E402
from multimodal.cache import FeatureCache, cache_datasets  # noqa: E402
from multimodal.config import DataConfig  # noqa: E402
from multimodal.data import BadSampleError, Collator, build_splits, make_dataloader  # noqa: E402
from multimodal.files import write_json as write_state  # noqa: E402
from multimodal.training.checkpoints import resolve_latest  # noqa: E402
from multimodal.training.integrity import file_manifest  # noqa: E402
from tests.multimodal.cache.test_cache import CountingImageEncoder  # noqa: E402


def _cut(path: str, keep: float = 0.5) -> None:
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])


def _flip(path: str) -> None:
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))


def _garble(path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "wb") as f:
        f.write(os.urandom(size))


def _evil_pickle(folder: str) -> None:
    class Payload:
        def __reduce__(self):
            return os.makedirs, (os.path.join(folder, "CODE-RAN"),)

    path = os.path.join(folder, "custom_checkpoint_0.pkl")
    torch.save({**torch.load(path, weights_only=True), "x": Payload()}, path)
    state_file = os.path.join(folder, "trainer_state.json")
    state = json.load(open(state_file))
    state["files"] = file_manifest(folder, skip=["trainer_state.json"])  # the manifest rewritten to match
    write_state(state_file, state)


CHECKPOINT_CASES = {
    "trainer_state.json cut in half": lambda f: _cut(os.path.join(f, "trainer_state.json")),
    "trainer_state.json empty": lambda f: open(os.path.join(f, "trainer_state.json"), "w").close(),
    "trainer_state.json binary": lambda f: open(os.path.join(f, "trainer_state.json"), "wb").write(b"\xff\x00\x17"),
    "trainer_state.json a JSON list": lambda f: open(os.path.join(f, "trainer_state.json"), "w").write("[1, 2]"),
    "model.safetensors cut in half": lambda f: _cut(os.path.join(f, "model.safetensors")),
    "optimizer.bin one byte flipped": lambda f: _flip(os.path.join(f, "optimizer.bin")),
    "random_states_0.pkl deleted": lambda f: os.remove(os.path.join(f, "random_states_0.pkl")),
    "ema.safetensors cut in half": lambda f: _cut(os.path.join(f, "ema.safetensors")),
    "scheduler pickle refers to os.makedirs (manifest rewritten)": _evil_pickle,
    "marker deleted (kill before the state file)": lambda f: os.remove(os.path.join(f, "trainer_state.json")),
}


def checkpoint_cases(tmp: str) -> list[dict]:
    data = make_data(os.path.join(tmp, "ckdata"))
    out = os.path.join(tmp, "ckrun")
    run(load_config(None, _overrides(data, out, 2) + ["train.keep_checkpoints=null", "train.stop_after_steps=6"]))
    root = os.path.join(out, "checkpoints")
    newest, _, _ = resolve_latest(root)
    rows = []
    for name, damage in CHECKPOINT_CASES.items():
        copy = os.path.join(tmp, "ck", name.replace(" ", "_")[:40])
        shutil.copytree(root, copy)
        target = os.path.join(copy, os.path.basename(newest))
        damage(target)
        picked, _, skipped = resolve_latest(copy)
        rows.append({"case": name, "skipped": len(skipped), "resumes from": os.path.basename(picked or "-"),
                     "code ran": os.path.exists(os.path.join(target, "CODE-RAN")),
                     "names it": bool(skipped) and target in skipped[0], "message": (skipped or ["-"])[0][len(copy) + 1:][:110]})
    torn = os.path.join(tmp, "ck", "torn")
    shutil.copytree(root, torn)
    os.makedirs(os.path.join(torn, "step-0000099"))
    open(os.path.join(torn, "step-0000099", "model.safetensors"), "wb").write(b"\0" * 64)
    picked, _, skipped = resolve_latest(torn)
    rows.append({"case": "torn folder (kill inside save_state)", "skipped": len(skipped), "code ran": False,
                 "resumes from": os.path.basename(picked), "names it": "step-0000099" in skipped[0],
                 "message": skipped[0][len(torn) + 1:][:110]})
    return rows


def _images(root: str, n: int = 6) -> list[str]:
    os.makedirs(root, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(os.path.join(root, f"{i}.png"))
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (8, 8), dtype=np.uint8)).save(paths[-1])
    return paths


CACHE_CASES = {
    "shard cut in half": lambda s: _cut(s),
    "shard overwritten with random bytes (same size)": lambda s: _garble(s),
    "index empty": lambda s: open(s[: -len(".safetensors")] + ".json", "w").close(),
    "index cut in half": lambda s: _cut(s[: -len(".safetensors")] + ".json"),
    "index binary": lambda s: open(s[: -len(".safetensors")] + ".json", "wb").write(b"\xff\xfe\0"),
    "index lists keys the shard lacks": lambda s: open(s[: -len(".safetensors")] + ".json", "w").write('{"keys": ["x"]}'),
    "shard deleted (index left)": lambda s: os.remove(s),
    "index deleted, shard 11 min old (orphan)": lambda s: (os.remove(s[: -len(".safetensors")] + ".json"),
                                                           os.utime(s, (os.path.getmtime(s) - 660,) * 2)),
    "meta.json emptied": lambda s: open(os.path.join(os.path.dirname(s), "meta.json"), "w").close(),
}


def cache_cases(tmp: str) -> list[dict]:
    images = _images(os.path.join(tmp, "cimg"))
    rows = []
    for name, damage in CACHE_CASES.items():
        root = os.path.join(tmp, "cache", name.replace(" ", "_")[:30])
        cache = FeatureCache(CountingImageEncoder(), root, shard_size=2)
        keys = cache.build(images, batch_size=2, show_progress=False)
        reference = cache.load(keys)
        damage(str(sorted(cache.directory.glob("shard-*.safetensors"))[0]))
        enc = CountingImageEncoder()
        try:
            reopened = FeatureCache(enc, root, shard_size=2)
            reopened.build(images, batch_size=2, show_progress=False)
            again = reopened.load(keys)
            outcome = "repaired" if torch.equal(again.pooled, reference.pooled) else "WRONG FEATURES"
            note = reopened.repairs[0] if reopened.repairs else "-"
        except Exception as err:  # noqa: BLE001 - what this script counts
            outcome, note, enc.calls = f"ESCAPED {type(err).__name__}", str(err), -1
        rows.append({"case": name, "outcome": outcome, "recomputed": enc.calls,
                     "names folder": str(cache.directory) in note, "report": note[len(str(cache.directory)) + 16:][:100]})
    return rows


def _bad_files(root: str) -> dict[str, tuple[str, str]]:
    os.makedirs(root, exist_ok=True)
    good = os.path.join(root, "good.png")
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(good)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(os.path.join(root, "t.png"))
    _cut(os.path.join(root, "t.png"), 0.6)
    open(os.path.join(root, "zero.png"), "wb").close()
    open(os.path.join(root, "text.png"), "w").write("not an image")
    os.makedirs(os.path.join(root, "folder.png"))
    sf.write(os.path.join(root, "t.wav"), np.full(16000, 0.1, np.float32), 16000)
    _cut(os.path.join(root, "t.wav"))
    sf.write(os.path.join(root, "t.flac"), np.random.default_rng(0).normal(0, 0.3, 16000).astype(np.float32), 16000)
    _cut(os.path.join(root, "t.flac"), 0.8)
    sf.write(os.path.join(root, "empty.wav"), np.zeros(0, np.float32), 16000)
    open(os.path.join(root, "junk.wav"), "wb").write(b"RIFF\x10\0\0\0WAVEjunkjunk")
    return {"missing image": ("image", "nope.png"), "truncated PNG": ("image", "t.png"), "zero-byte image": ("image", "zero.png"),
            "text file as image": ("image", "text.png"), "folder as image": ("image", "folder.png"),
            "WAV cut mid-data": ("audio", "t.wav"), "FLAC cut at 80%": ("audio", "t.flac"), "empty WAV": ("audio", "empty.wav"),
            "garbage WAV header": ("audio", "junk.wav")}


class _Count:
    """Picklable stand-in preprocessor: how many samples reached it."""

    def __call__(self, raw: list) -> dict:
        return {"n": torch.tensor([len(raw)])}


def data_cases(tmp: str) -> list[dict]:
    root = os.path.join(tmp, "bad")
    kinds = _bad_files(root)
    sf.write(os.path.join(root, "good.wav"), np.full(8000, 0.1, np.float32), 16000)
    rows = []
    for name, (modality, bad) in kinds.items():
        good = "good.png" if modality == "image" else "good.wav"
        files = [good, good, bad, good, good, good]
        manifest = os.path.join(root, f"{name.replace(' ', '_')}.csv")
        pd.DataFrame({modality: files, "label": ["a", "b"] * 3}).to_csv(manifest, index=False)
        row = {"kind": name}
        for mode in ("skip", "error"):
            cfg = DataConfig(train=manifest, text_column=None, image_column="image" if modality == "image" else None,
                             audio_column="audio" if modality == "audio" else None, val_fraction=0, test_fraction=0,
                             validate=False, on_bad_sample=mode)
            splits = build_splits(cfg, {modality: modality}, "label", "single_label", progress=False)
            collate = Collator({modality: _Count()})
            try:
                workers = 2 if mode == "skip" else 0  # skip: the rows are found in DataLoader workers
                seen = [i for b in make_dataloader(splits.train, collate, 2, num_workers=workers) for i in b["index"].tolist()]
                report = splits.skip_report()["train"]
                row[mode] = f"skipped rows {report['rows']}, {len(seen)} loaded" if mode == "skip" else "NOT RAISED"
            except BadSampleError as err:
                row[mode] = "BadSampleError, row 3" if "row 3" in str(err) and bad in str(err) else f"unnamed: {err}"
            except Exception as err:  # noqa: BLE001 - what this script counts
                row[mode] = f"ESCAPED {type(err).__name__}: {str(err)[:60]}"
        if modality == "image":  # the same file through the feature cache
            splits = build_splits(DataConfig(train=manifest, text_column=None, audio_column=None, val_fraction=0,
                                             test_fraction=0, validate=False, on_bad_sample="skip"),
                                  {"image": "image"}, "label", "single_label", progress=False)
            model = torch.nn.Module()
            model.encoders = torch.nn.ModuleDict({"image": CountingImageEncoder().requires_grad_(False)})
            cache_datasets(model, {"train": splits.train}, os.path.join(tmp, "bcache"), show_progress=False)
            row["cache, skip"] = f"skipped rows {splits.skip_report()['train']['rows']}, {len(splits.train)} kept"
        rows.append(row)
    return rows


def main() -> None:
    """Run the three groups of cases and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = checkpoint_cases(tmp)
        print_table("Damaged checkpoints (newest of step-1..6)", ckpt, ["case", "skipped", "resumes from", "code ran",
                                                                         "names it", "message"])
        cache = cache_cases(tmp)
        print_table("Damaged feature cache", cache, ["case", "outcome", "recomputed", "names folder", "report"])
        data = data_cases(tmp)
        print_table("Bad files under data.validate=false", data, ["kind", "skip", "error", "cache, skip"])
    print(f"\nsummary: {len(ckpt)} checkpoint cases ({sum(r['names it'] and not r['code ran'] for r in ckpt)} skipped "
          f"with the file named), {len(cache)} cache cases ({sum(r['outcome'] == 'repaired' for r in cache)} repaired), "
          f"{len(data)} bad-file kinds")
    write_json(args.json, {"checkpoints": ckpt, "cache": cache, "data": data})


if __name__ == "__main__":
    main()
