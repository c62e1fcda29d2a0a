"""Real dev-set builder: reading a repository snapshot, speaker-disjoint manifests, a clear error when absent."""

from __future__ import annotations

import io
import json
import os
import subprocess

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from benchmarks import devsets_real
from benchmarks.devsets_io import Snapshot, SnapshotMissing, open_snapshot
from benchmarks.devsets_pairs import build_speechocean
from benchmarks.devsets_sources import SOURCES, build_arabic_commands


def _git(repo: str, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True, env=env).stdout


def _wav(seconds: float = 0.5, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(seconds * rate), dtype=np.float32), rate, format="WAV")
    return buf.getvalue()


@pytest.fixture()
def arabic_snapshot(tmp_path):
    """A tiny repository laid out like the Arabic Speech Commands one: 2 words x 3 speakers x 2 rounds."""
    work = tmp_path / "work"
    rows = {"train": [], "val": [], "test": []}
    for word in ("open", "zoom in", "five"):
        os.makedirs(work / "dataset" / word)
        for speaker, split in (("00000001", "train"), ("00000002", "val"), ("00000003", "test")):
            for rnd in ("01", "04"):
                rel = f"dataset/{word}/{speaker}_NO_{rnd}.wav"
                (work / rel).write_bytes(_wav())
                rows[split].append({"file": rel, "class": word})
    for split, items in rows.items():
        pd.DataFrame(items).to_csv(work / f"{split}.csv", index=False)
    (work / "dataset" / "open" / "00000001_NO_02.wav").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n")
    _git(str(work), "init", "-q")
    _git(str(work), "add", "-A")
    _git(str(work), "commit", "-qm", "data")
    commit = _git(str(work), "rev-parse", "HEAD").strip()
    mirror = tmp_path / "mirror"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(mirror / "owner+arabic" / "repo")], check=True)
    return str(mirror), str(mirror / "owner+arabic" / "repo"), commit


def test_snapshot_reads_blobs_and_reports_lfs_pointers_as_missing(arabic_snapshot):
    _, git_dir, commit = arabic_snapshot
    snap = Snapshot(git_dir, commit)
    try:
        assert "dataset/open/00000001_NO_01.wav" in snap.paths("dataset")
        assert snap.read("dataset/open/00000001_NO_01.wav")[:4] == b"RIFF"
        assert snap.read("dataset/open/00000001_NO_02.wav") is None  # an LFS pointer, not the audio
        assert snap.read("no/such/file.wav") is None
    finally:
        snap.close()


def test_arabic_builder_keeps_non_digit_words_and_the_authors_speaker_split(arabic_snapshot, tmp_path):
    _, git_dir, commit = arabic_snapshot
    snap = Snapshot(git_dir, commit)
    out = tmp_path / "built"
    try:
        rows, notes = build_arabic_commands(snap, str(out))
    finally:
        snap.close()
    table = pd.DataFrame(rows)
    assert set(table["label"]) == {"open", "zoom_in"}  # "five" is a digit word; rounds 04 are not kept
    assert len(table) == 6
    assert table.groupby("group")["split"].nunique().max() == 1  # a speaker never spans two splits
    assert set(table["split"]) == {"train", "validation", "test"}
    assert all((out / p).exists() for p in table["audio"])
    assert sf.info(str(out / table["audio"].iloc[0])).samplerate == 16000
    assert notes["missing_in_snapshot"] == ["dataset/open/00000001_NO_02.wav"]


def test_missing_snapshot_names_the_repository_to_fetch(tmp_path, capsys):
    with pytest.raises(SnapshotMissing, match="github:abdulkaderghandoura/arabic-speech-commands-dataset"):
        open_snapshot(SOURCES["arabic_commands"], str(tmp_path))
    code = devsets_real.main(["arabic_commands", "--mirror", str(tmp_path), "--root", str(tmp_path / "cache")])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: dev set 'arabic_commands': no snapshot of github:abdulkaderghandoura/arabic-speech-"
                   f"commands-dataset under {tmp_path} (looked for {tmp_path}/abdulkaderghandoura+arabic-speech-"
                   f"commands-dataset/repo); fetch it first"]


def test_build_writes_manifest_source_and_index(arabic_snapshot, tmp_path, monkeypatch):
    mirror, _, commit = arabic_snapshot
    source = SOURCES["arabic_commands"]
    monkeypatch.setitem(SOURCES, "arabic_commands", type(source)(**{**source.__dict__, "repository": "owner/arabic",
                                                                     "commit": commit}))
    manifest = devsets_real.build("arabic_commands", str(tmp_path / "cache"), mirror)
    table = pd.read_csv(manifest)
    assert list(table.columns) == ["audio", "label", "group", "split"]
    record = json.loads((tmp_path / "cache" / "arabic_commands" / "SOURCE.json").read_text())
    assert record["commit"] == commit and record["licence"] == "CC BY 4.0" and record["summary"]["rows"] == 6
    assert "`arabic_commands` | 6 |" in (tmp_path / "cache" / "INDEX.md").read_text()
    with pytest.raises(SystemExit, match="unknown dev set 'nope'"):
        devsets_real.build("nope", str(tmp_path / "cache"), mirror)


@pytest.fixture()
def speechocean_snapshot(tmp_path):
    """A tiny repository laid out like speechocean762: Kaldi tables per half, WAVE/SPEAKERxxxx/<utt>.WAV."""
    work = tmp_path / "so"
    halves = {"train": [("0001", 7), ("0002", 30), ("0003", 9), ("0004", 25), ("0005", 12)],
              "test": [("0006", 8), ("0007", 40)]}
    for half, speakers in halves.items():
        os.makedirs(work / half)
        scp, text, utt2spk = [], [], []
        for spk, _ in speakers:
            for n in range(2):
                utt = f"{spk}000{n}"
                rel = f"WAVE/SPEAKER{spk}/{utt}.WAV"
                os.makedirs(work / os.path.dirname(rel), exist_ok=True)
                (work / rel).write_bytes(_wav(0.3))
                scp.append(f"{utt}\t{rel}")
                text.append(f"{utt}\tSPEAKER {spk}  SAYS {n}")
                utt2spk.append(f"{utt} {spk}")
        (work / half / "wav.scp").write_text("\n".join(scp) + "\n")
        (work / half / "text").write_text("\n".join(text) + "\n")
        (work / half / "utt2spk").write_text("\n".join(utt2spk) + "\n")
        (work / half / "spk2age").write_text("".join(f"{spk}\t{age}\n" for spk, age in speakers))
    (work / "WAVE" / "SPEAKER0001" / "00010000.WAV").write_text(  # listed in wav.scp, content only in LFS
        "version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n")
    _git(str(work), "init", "-q")
    _git(str(work), "add", "-A")
    _git(str(work), "commit", "-qm", "data")
    commit = _git(str(work), "rev-parse", "HEAD").strip()
    return str(work / ".git"), commit


def test_speechocean_builder_pairs_transcripts_and_keeps_speakers_in_one_split(speechocean_snapshot, tmp_path):
    git_dir, commit = speechocean_snapshot
    snap = Snapshot(git_dir, commit)
    out = tmp_path / "built"
    try:
        rows, notes = build_speechocean(snap, str(out))
    finally:
        snap.close()
    table = pd.DataFrame(rows)
    assert len(table) == 13 and notes["missing_in_snapshot"] == ["WAVE/SPEAKER0001/00010000.WAV"]
    assert table.groupby("group")["split"].nunique().max() == 1  # a speaker never spans two splits
    assert set(table.loc[table["split"] == "test", "group"]) == {"spk0006", "spk0007"}  # the authors' test half
    assert table.loc[table["split"] == "validation", "group"].nunique() == 1  # 20% of 5 training speakers
    row = table.set_index("audio").loc["wav/00020001.wav"]
    assert row["text"] == "SPEAKER 0002 SAYS 1" and row["label"] == "adult"  # whitespace folded; age 30
    assert table.set_index("group").loc["spk0006", "label"].iloc[0] == "child"
    assert all((out / p).exists() for p in table["audio"])


def test_baseline_ablation_scores_each_media_column_alone_then_together(tmp_path):
    from benchmarks.bench_sklearn_baseline import media_views

    paired = tmp_path / "paired.csv"
    paired.write_text("text,audio,label,split\nhi,a.wav,x,train\n")
    single = tmp_path / "single.csv"
    single.write_text("image,label,split\na.jpg,x,train\n")
    assert media_views(str(paired), ablate=True) == [("text",), ("audio",), ("text", "audio")]
    assert media_views(str(paired), ablate=False) == [("text", "audio")]
    assert media_views(str(single), ablate=True) == [("image",)]  # one column: nothing to ablate
