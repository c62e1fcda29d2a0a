"""The real dev sets: which repository snapshot each comes from, its terms, and how its rows are built."""

from __future__ import annotations

import io
import os
import re

from benchmarks.devsets_io import Snapshot, Source, write_image, write_wav
from benchmarks.devsets_pairs import build_speechocean

# clip length of each audio set: its max_seconds for the audio-mel encoder
CLIP_SECONDS = {"urbansound": 4.0, "arabic_commands": 1.0, "speechocean": 8.0}
URBAN_CLASSES = ("air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling", "engine_idling",
                 "gun_shot", "jackhammer", "siren", "street_music")
URBAN_SPLITS = {"fold1": "train", "fold2": "train", "fold3": "validation", "fold10": "test"}


def build_urbansound(snap: Snapshot, folder: str) -> tuple[list[dict], dict]:
    """UrbanSound8K folds 1, 2 (train), 3 (validation, partial in the snapshot) and 10 (test), as 16 kHz mono."""
    os.makedirs(os.path.join(folder, "wav"), exist_ok=True)
    rows, missing = [], []
    pattern = re.compile(r"UrbanSound8K/audio/(fold\d+)/(\d+)-(\d+)-(\d+)-(\d+)\.wav$")
    for path in snap.paths("UrbanSound8K/audio"):
        match = pattern.match(path)
        if not match or match.group(1) not in URBAN_SPLITS:
            continue
        fold, fsid, class_id = match.group(1), match.group(2), int(match.group(3))
        data = snap.read(path)
        if data is None:
            missing.append(path)
            continue
        rel = f"wav/{os.path.basename(path)}"
        write_wav(data, os.path.join(folder, rel), max_seconds=4.0)
        rows.append({"audio": rel, "label": URBAN_CLASSES[class_id], "group": f"fs{fsid}",
                     "split": URBAN_SPLITS[fold]})
    notes = {"kept": "UrbanSound8K folds 1 and 2 (train), 3 (validation; the snapshot holds 387 of its 925 "
                     "clips), 10 (test); official folds, so no Freesound recording spans two splits. "
                     "Resampled to 16 kHz mono, PCM-16; clips are <= 4 s already.",
             "group": "Freesound recording id (fsID): slices of one recording share it",
             "missing_in_snapshot": missing}
    return rows, notes


ARABIC_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "digit")
ARABIC_ROUNDS = ("01", "02", "03")


def build_arabic_commands(snap: Snapshot, folder: str) -> tuple[list[dict], dict]:
    """Arabic Speech Commands: the 29 non-digit keywords, rounds 1-3 of each speaker, the authors' speaker split."""
    import pandas as pd

    os.makedirs(os.path.join(folder, "wav"), exist_ok=True)
    split_of = {}
    for split, csv in (("train", "train.csv"), ("validation", "val.csv"), ("test", "test.csv")):
        table = pd.read_csv(io.BytesIO(snap.read(csv)))
        split_of.update({path: split for path in table["file"]})
    rows, missing = [], []
    pattern = re.compile(r"dataset/([^/]+)/(\d{8})_NO_(\d\d)\.wav$")
    for path in snap.paths("dataset"):
        match = pattern.match(path)
        if not match or match.group(1) in ARABIC_DIGITS or match.group(3) not in ARABIC_ROUNDS:
            continue
        word, speaker, rnd = match.groups()
        data = snap.read(path)
        if data is None or path not in split_of:
            missing.append(path)
            continue
        rel = f"wav/{word.replace(' ', '_')}_{speaker}_{rnd}.wav"
        write_wav(data, os.path.join(folder, rel), max_seconds=1.0)
        rows.append({"audio": rel, "label": word.replace(" ", "_"), "group": f"spk{speaker}",
                     "split": split_of[path]})
    notes = {"kept": "the 29 keywords that are not digits, utterance rounds 01-03 of each of the 30 speakers "
                     "(of 10); the authors' speaker-disjoint train/val/test CSVs decide the split, so test "
                     "speakers are never heard in training. 1 s clips at 16 kHz.",
             "group": "contributor id (speaker)", "missing_in_snapshot": missing}
    return rows, notes


def stratified_splits(labels: list[str], seed: int = 0, test: float = 0.2, validation: float = 0.2) -> list[str]:
    """A fixed, class-stratified train/validation/test assignment for sets without a group structure."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    rest, test_idx = train_test_split(idx, test_size=test, stratify=labels, random_state=seed)
    train_idx, val_idx = train_test_split(rest, test_size=validation / (1 - test),
                                          stratify=[labels[i] for i in rest], random_state=seed)
    out = [""] * len(labels)
    for name, chosen in (("train", train_idx), ("validation", val_idx), ("test", test_idx)):
        for i in chosen:
            out[i] = name
    return out


def class_folder_photos(snap: Snapshot, folder: str, top: str, prefix_class: bool) -> tuple[list[dict], list[str]]:
    """Photos laid out as <top>/<class>/<file>.jpg, re-encoded as JPEG under img/ (file names prefixed with the
    class when they do not carry it), with a stratified 60/20/20 split; returns the rows and the paths the
    snapshot lacks."""
    os.makedirs(os.path.join(folder, "img"), exist_ok=True)
    rows, missing = [], []
    for path in snap.paths(top):
        parts = path.split("/")
        if len(parts) != 3 or not parts[2].lower().endswith((".jpg", ".jpeg")):
            continue
        data = snap.read(path)
        if data is None:
            missing.append(path)
            continue
        rel = f"img/{parts[1]}_{parts[2]}" if prefix_class else f"img/{parts[2]}"
        write_image(data, os.path.join(folder, rel))
        rows.append({"image": rel, "label": parts[1]})
    for row, split in zip(rows, stratified_splits([r["label"] for r in rows])):
        row["split"] = split
    return rows, missing


def build_trashnet(snap: Snapshot, folder: str) -> tuple[list[dict], dict]:
    """TrashNet photos (dataset-resized, 512x384), six material classes, stratified 60/20/20 split."""
    rows, missing = class_folder_photos(snap, folder, "dataset-resized", prefix_class=False)
    notes = {"kept": "every photo of dataset-resized (the authors' 512x384 version); class-stratified random "
                     "60/20/20 train/validation/test split (seed 0). No group column: each photo is its own item.",
             "missing_in_snapshot": missing}
    return rows, notes


def build_sign_digits(snap: Snapshot, folder: str) -> tuple[list[dict], dict]:
    """Sign Language Digits: 100x100 photos of hands showing 0-9, stratified 60/20/20 split."""
    rows, missing = class_folder_photos(snap, folder, "Dataset", prefix_class=True)
    notes = {"kept": "every photo (100x100 RGB, 218 students' hands); class-stratified random 60/20/20 "
                     "train/validation/test split (seed 0). The files do not say which student is which, so "
                     "there is no group column and a signer can appear in train and test.",
             "missing_in_snapshot": missing}
    return rows, notes


SOURCES: dict[str, Source] = {
    "urbansound": Source(
        repository="Alejandro-131004/AC-II",
        commit="8f8b8f279a1f8b240a3b3019191229c225793e7a",
        licence="CC BY-NC 3.0 (UrbanSound8K; field recordings from freesound.org)",
        citation="J. Salamon, C. Jacoby and J. P. Bello, \"A Dataset and Taxonomy for Urban Sound Research\", "
                 "22nd ACM International Conference on Multimedia, Orlando, USA, Nov. 2014.",
        url="https://urbansounddataset.weebly.com/urbansound8k.html",
        description="urban environmental sounds, 10 classes, real field recordings (<= 4 s)",
        modalities=("audio",),
        build=build_urbansound,
    ),
    "arabic_commands": Source(
        repository="abdulkaderghandoura/arabic-speech-commands-dataset",
        commit="72f3438212ff6cf8fbe5ae8068361840646429bd",
        licence="CC BY 4.0",
        citation="A. Ghandoura, F. Hjabo and O. Al Dakkak, \"Building and Benchmarking an Arabic Speech Commands "
                 "Dataset for Small-Footprint Keyword Spotting\", Engineering Applications of Artificial "
                 "Intelligence, 2021.",
        url="https://github.com/abdulkaderghandoura/arabic-speech-commands-dataset",
        description="spoken command words (Arabic) by 30 speakers, 29 keywords, unseen speakers in test",
        modalities=("audio",),
        build=build_arabic_commands,
    ),
    "trashnet": Source(
        repository="congduytran12/Trash-Classification-",
        commit="00212f2c18dcdb9045c74481eaae5baaf72537df",
        licence="MIT (TrashNet, github.com/garythung/trashnet; photos taken by its authors)",
        citation="M. Yang and G. Thung, \"Classification of Trash for Recyclability Status\", CS229 project report, "
                 "Stanford University, 2016 (dataset: github.com/garythung/trashnet).",
        url="https://github.com/garythung/trashnet",
        description="photos of waste items, 6 material classes (cardboard, glass, metal, paper, plastic, trash)",
        modalities=("image",),
        build=build_trashnet,
    ),
    "sign_digits": Source(
        repository="ardamavi/Sign-Language-Digits-Dataset",
        commit="4b09433ef9d5c60602e8805bb54b8aa2428527f8",
        licence="Apache-2.0",
        citation="A. Mavi, \"A New Dataset and Proposed Convolutional Neural Network Architecture for "
                 "Classification of American Sign Language Digits\", arXiv:2011.08927, 2020 (Turkey Ankara "
                 "Ayrancı Anadolu High School's Sign Language Digits Dataset).",
        url="https://github.com/ardamavi/Sign-Language-Digits-Dataset",
        description="photos of hands signing the digits 0-9 (218 students), 10 classes",
        modalities=("image",),
        build=build_sign_digits,
    ),
    "speechocean": Source(
        repository="jimbozhang/speechocean762",
        commit="613968e3b0b789fc33936fb5eba1973176ba7d11",
        licence="free for commercial and non-commercial use (the repository's README; the corpus is also OpenSLR "
                "SLR101); cite Zhang et al. 2021",
        citation="J. Zhang, Z. Zhang, Y. Wang, Z. Yan, Q. Song, Y. Huang, K. Li, D. Povey and Y. Wang, "
                 "\"speechocean762: An Open-Source Non-native English Speech Corpus For Pronunciation Assessment\", "
                 "Proc. Interspeech 2021.",
        url="https://github.com/jimbozhang/speechocean762",
        description="English sentences read by 250 Mandarin-L1 speakers (children and adults), each recording paired "
                    "with its transcript; unseen speakers in test",
        modalities=("text", "audio"),
        build=build_speechocean,
    ),
}
