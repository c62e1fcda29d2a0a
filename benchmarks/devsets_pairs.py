"""Builders of the paired real dev sets (human text beside real recordings or photos), used by `devsets_sources`."""

from __future__ import annotations

import os
import re

import numpy as np

from benchmarks.devsets_io import Snapshot, write_wav

SPEECHOCEAN_CHILD_MAX_AGE = 15  # the corpus's children are 6-15 years old, its adults 19-43: no age in between


def validation_groups(groups: list[str], fraction: float, seed: int = 0) -> set[str]:
    """A fixed `fraction` of the distinct groups (at least one), drawn with `seed`: the groups carved out as
    validation, so a group never spans train and validation."""
    distinct = sorted(set(groups))
    count = max(1, round(fraction * len(distinct)))
    chosen = np.random.default_rng(seed).permutation(len(distinct))[:count]
    return {distinct[i] for i in chosen}


def _kaldi_table(snap: Snapshot, path: str) -> dict[str, str]:
    """A Kaldi-style two-column table (`key<whitespace>value` per line) from the snapshot."""
    data = snap.read(path)
    if data is None:
        raise ValueError(f"{snap.git_dir}: {path} is missing from the snapshot")
    table = {}
    for line in data.decode("utf-8").splitlines():
        parts = line.split(None, 1)
        if parts:
            table[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
    return table


def build_speechocean(snap: Snapshot, folder: str) -> tuple[list[dict], dict]:
    """speechocean762: 5,000 English sentences read by 250 Mandarin-L1 speakers, each with its transcript; the
    authors' speaker-disjoint train/test halves, 20% of the training speakers carved out as validation."""
    os.makedirs(os.path.join(folder, "wav"), exist_ok=True)
    official, texts, speaker_of, ages = {}, {}, {}, {}
    for half in ("train", "test"):
        for utt, rel in _kaldi_table(snap, f"{half}/wav.scp").items():
            official[utt] = (half, rel)
        texts.update(_kaldi_table(snap, f"{half}/text"))
        speaker_of.update(_kaldi_table(snap, f"{half}/utt2spk"))
        ages.update({spk: int(age) for spk, age in _kaldi_table(snap, f"{half}/spk2age").items()})
    held_out = validation_groups([speaker_of[u] for u, (half, _) in official.items() if half == "train"], 0.2)
    rows, missing = [], []
    for utt, (half, rel) in sorted(official.items()):
        data = snap.read(rel)
        if data is None or utt not in texts:
            missing.append(rel)
            continue
        speaker = speaker_of[utt]
        out = f"wav/{utt}.wav"
        write_wav(data, os.path.join(folder, out), max_seconds=30.0)
        split = "test" if half == "test" else ("validation" if speaker in held_out else "train")
        rows.append({"text": re.sub(r"\s+", " ", texts[utt]), "audio": out,
                     "label": "child" if ages[speaker] <= SPEECHOCEAN_CHILD_MAX_AGE else "adult",
                     "group": f"spk{speaker}", "split": split})
    notes = {"kept": "every utterance the authors' train/test lists name (2,500 + 2,500; the snapshot's 245 "
                     "unlisted WAVE files are left out); text = the prompt the speaker read (upper case, as "
                     "released); the authors' speaker-disjoint halves decide test (125 speakers), and a fixed 20% "
                     "of the 125 training speakers (seed 0) is validation. label = child (age 6-15) or adult "
                     "(19-43) from spk2age, a class per pair for fused text+audio classification. 16 kHz mono "
                     "PCM-16, uncropped (1.6-20 s, median 3.6 s).",
             "group": "speaker id: every utterance of a speaker stays in one split",
             "missing_in_snapshot": missing}
    return rows, notes
