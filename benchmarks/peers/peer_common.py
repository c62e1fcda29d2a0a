"""What the peer runners and race.py share: the job's arguments, the clock, the result file and the scorers.

Only the standard library, numpy and pandas, so every peer's venv (and the framework's) can import it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

START = time.time()
_LAUNCH = float(os.environ.get("RACE_T0") or START)  # race.py's launch time, so imports count as for ours


def elapsed() -> float:
    """Seconds since race.py launched this runner (since the import of this module when run by hand)."""
    return time.time() - _LAUNCH


def job_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every runner takes: the split manifests, the output folder, the budget, the encoders."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--train", required=True, help="train.csv (columns text, image, label; absolute image paths)")
    p.add_argument("--validation", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--out", required=True, help="folder for result.json and predictions/embeddings")
    p.add_argument("--budget-s", type=float, required=True, help="training time budget in seconds")
    p.add_argument("--text-model", required=True, help="local Hugging Face folder of the text encoder")
    p.add_argument("--image-model", default=None, help="local timm Hugging Face folder of the image encoder")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=2)
    return p


def read_split(path: str, columns: Sequence[str]) -> pd.DataFrame:
    """Read one split manifest and check that it has the columns the job needs."""
    df = pd.read_csv(path, keep_default_na=False)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SystemExit(f"{path}: missing column(s) {missing}; has {list(df.columns)}")
    return df


@dataclass
class BestTracker:
    """Validation scores over the run, and the elapsed time at which the best one was reached."""

    metric: str
    history: list[dict[str, float]] = field(default_factory=list)
    best: float = float("-inf")
    time_to_best_s: float | None = None

    def update(self, score: float, **extra: float) -> bool:
        """Record a validation score now; True when it is a new best."""
        now = elapsed()
        self.history.append({"elapsed_s": round(now, 2), self.metric: float(score), **extra})
        if score > self.best:
            self.best, self.time_to_best_s = float(score), round(now, 2)
            return True
        return False


def write_result(out: str, peer: str, tracker: BestTracker | None, notes: list[str], **extra: Any) -> None:
    """Write ``result.json``: the validation history, time to the best validation score, notes, versions."""
    os.makedirs(out, exist_ok=True)
    result = {
        "peer": peer,
        "python": platform.python_version(),
        "wall_inside_s": round(elapsed(), 2),
        "validation_metric": tracker.metric if tracker else None,
        "best_validation": tracker.best if tracker else None,
        "time_to_best_s": tracker.time_to_best_s if tracker else None,
        "history": tracker.history if tracker else [],
        "notes": notes,
        **extra,
    }
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f, indent=2, default=str)


def rank_of_first_hit(scores: np.ndarray, relevant: list[set[int]]) -> np.ndarray:
    """1-based rank of the best-ranked relevant column per row; ties count against the query."""
    ranks = np.empty(len(relevant), dtype=np.int64)
    for i, rel in enumerate(relevant):
        best_rel = max(scores[i, j] for j in rel)
        others = np.delete(scores[i], sorted(rel))
        ranks[i] = int((others >= best_rel).sum()) + 1  # a non-relevant entry scoring as high ranks ahead
    return ranks


def retrieval_metrics(
    text_emb: np.ndarray, image_emb: np.ndarray, pairs: Sequence[tuple[int, int]], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K both ways over distinct captions and images; ``pairs`` are (caption index, image index)."""
    t = text_emb / np.linalg.norm(text_emb, axis=1, keepdims=True)
    v = image_emb / np.linalg.norm(image_emb, axis=1, keepdims=True)
    sim = t @ v.T
    t2i_rel: list[set[int]] = [set() for _ in range(len(t))]
    i2t_rel: list[set[int]] = [set() for _ in range(len(v))]
    for ti, ii in pairs:
        t2i_rel[ti].add(ii)
        i2t_rel[ii].add(ti)
    out: dict[str, float] = {}
    for name, scores, rel in (("t2i", sim, t2i_rel), ("i2t", sim.T, i2t_rel)):
        ranks = rank_of_first_hit(scores, rel)
        for k in ks:
            out[f"{name}_R@{k}"] = float((ranks <= k).mean())
        out[f"{name}_median_rank"] = float(np.median(ranks))
    out["rsum"] = float(sum(out[f"{d}_R@{k}"] for d in ("t2i", "i2t") for k in ks))
    return out


def retrieval_index(df: pd.DataFrame, text_column: str = "text", image_column: str = "image"):
    """Distinct captions, distinct images, and the (caption, image) index pairs of a retrieval split."""
    texts = list(dict.fromkeys(df[text_column].astype(str)))
    images = list(dict.fromkeys(df[image_column].astype(str)))
    t_pos = {t: i for i, t in enumerate(texts)}
    i_pos = {p: i for i, p in enumerate(images)}
    pairs = sorted({(t_pos[str(t)], i_pos[str(p)]) for t, p in zip(df[text_column], df[image_column])})
    return texts, images, pairs
