"""Reading repository snapshots and writing dev-set files: the shared plumbing of `devsets_real`."""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

SAMPLE_RATE = 16000
COLUMNS = ("text", "image", "audio", "label", "group", "split")


class SnapshotMissing(RuntimeError):
    """A dev set's repository snapshot is not on this machine."""


@dataclass
class Source:
    """Where a dev set comes from and under which terms."""

    repository: str
    commit: str
    licence: str
    citation: str
    url: str
    description: str
    modalities: tuple[str, ...]
    build: Callable[[Snapshot, str], tuple[list[dict], dict]] | None = field(repr=False, default=None)


class Snapshot:
    """Read-only access to one commit of a bare git snapshot (blobs streamed with `git cat-file --batch`)."""

    def __init__(self, git_dir: str, commit: str) -> None:
        self.git_dir = git_dir
        self.commit = commit
        self._proc: subprocess.Popen | None = None

    def _git(self, *args: str) -> str:
        return subprocess.run(["git", "--git-dir", self.git_dir, *args], check=True, capture_output=True,
                              text=True).stdout

    def paths(self, under: str = "") -> list[str]:
        """Every file path in the commit (optionally under a folder), sorted."""
        out = self._git("ls-tree", "-r", "--name-only", self.commit, *([under] if under else []))
        return sorted(p for p in out.splitlines() if p)

    def read(self, path: str) -> bytes | None:
        """The bytes of `path` at the commit, or None when the snapshot lacks the blob (large or LFS files)."""
        if self._proc is None:
            self._proc = subprocess.Popen(["git", "--git-dir", self.git_dir, "cat-file", "--batch"],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._proc.stdin.write(f"{self.commit}:{path}\n".encode())
        self._proc.stdin.flush()
        header = self._proc.stdout.readline().decode().split()
        if len(header) < 3 or header[1] != "blob":
            return None
        data = self._proc.stdout.read(int(header[2]))
        self._proc.stdout.read(1)  # the newline after each object
        return None if data.startswith(b"version https://git-lfs.github.com/spec/") else data

    def close(self) -> None:
        """Stop the cat-file process."""
        if self._proc is not None:
            self._proc.stdin.close()
            self._proc.wait()
            self._proc = None


def mirror_root(explicit: str | None = None) -> str:
    """Folder holding the snapshots: the argument, else $MULTIMODAL_MIRROR, else /work/.mirror."""
    return explicit or os.environ.get("MULTIMODAL_MIRROR") or "/work/.mirror"


def cache_root(explicit: str | None = None) -> str:
    """Folder the sets are built into: the argument, else $MULTIMODAL_DEVSETS, else ~/.cache/multimodal-devsets."""
    return explicit or os.environ.get("MULTIMODAL_DEVSETS") or os.path.expanduser("~/.cache/multimodal-devsets")


def open_snapshot(source: Source, mirror: str) -> Snapshot:
    """The snapshot of `source.repository` at `source.commit`, or SnapshotMissing naming what to fetch."""
    owner_name = source.repository.replace("/", "+")
    candidates = [os.path.join(mirror, owner_name, "repo"), os.path.join(mirror, owner_name)]
    for git_dir in candidates:
        if os.path.isdir(os.path.join(git_dir, "objects")):
            check = subprocess.run(["git", "--git-dir", git_dir, "cat-file", "-e", f"{source.commit}^{{commit}}"],
                                   capture_output=True)
            if check.returncode != 0:
                raise SnapshotMissing(f"snapshot {git_dir} has no commit {source.commit}; fetch "
                                      f"github:{source.repository} again")
            return Snapshot(git_dir, source.commit)
    raise SnapshotMissing(f"no snapshot of github:{source.repository} under {mirror} (looked for "
                          f"{candidates[0]}); fetch it first")


# ------------------------------------------------------------------------------------------------ writing
def write_wav(data: bytes, out_path: str, max_seconds: float) -> float:
    """Decode audio bytes, mix to mono, resample to 16 kHz, crop to `max_seconds`, write PCM-16; returns seconds."""
    import soundfile as sf

    from encoders.audio import resample

    wave, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    mono = wave.mean(axis=1)
    mono = resample(mono, int(sr), SAMPLE_RATE)[: int(max_seconds * SAMPLE_RATE)]
    sf.write(out_path, mono, SAMPLE_RATE, subtype="PCM_16")
    return len(mono) / SAMPLE_RATE


def write_image(data: bytes, out_path: str, max_side: int = 512) -> tuple[int, int]:
    """Decode image bytes, convert to RGB, shrink so the longer side is at most `max_side`, write JPEG."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        img.thumbnail((max_side, max_side))
        img.save(out_path, "JPEG", quality=92)
        return img.size


def finish(folder: str, rows: list[dict], source: Source, name: str, notes: dict) -> dict:
    """Write manifest.csv and SOURCE.json for one built set; returns its summary for INDEX.md."""
    table = pd.DataFrame(rows)
    unknown = set(table.columns) - set(COLUMNS)
    if unknown:
        raise ValueError(f"{name}: manifest columns {sorted(unknown)} are not in {COLUMNS}")
    table = table[[c for c in COLUMNS if c in table.columns]]
    manifest = os.path.join(folder, "manifest.csv")
    table.to_csv(manifest + ".tmp", index=False)
    os.replace(manifest + ".tmp", manifest)
    summary = {
        "name": name, "rows": len(table), "columns": list(table.columns),
        "classes": sorted(table["label"].astype(str).unique().tolist()) if "label" in table else [],
        "splits": {k: int(v) for k, v in table["split"].value_counts().items()},
        "groups": int(table["group"].nunique()) if "group" in table else 0,
    }
    record = {"repository": f"https://github.com/{source.repository}", "commit": source.commit,
              "licence": source.licence, "citation": source.citation, "origin": source.url,
              "description": source.description, **notes, "summary": summary}
    with open(os.path.join(folder, "SOURCE.json"), "w") as f:
        json.dump(record, f, indent=2)
    return summary
