"""Readable evaluation reports: Markdown (and optionally HTML) with PNG plots next to `metrics.json`.

Plots: Recall@K curves for retrieval, a confusion matrix for (zero-shot) classification, and a grid
of the top retrieved items for a few caption queries (image thumbnails, or log-spectrogram
thumbnails for audio), plus the top captions retrieved for a few item queries.
"""

from __future__ import annotations

import html as html_lib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np


@dataclass
class RetrievalExamples:
    """Top-K results for a few queries in each direction, for the report's grids and tables."""

    modality: str
    # text -> item: caption, the retrieved items (paths or raw samples), and which of them is correct
    text_queries: list[str] = field(default_factory=list)
    text_results: list[list[Any]] = field(default_factory=list)
    text_correct: list[list[bool]] = field(default_factory=list)
    # item -> text: item (path or raw sample), retrieved captions, which are correct
    item_queries: list[Any] = field(default_factory=list)
    item_results: list[list[str]] = field(default_factory=list)
    item_correct: list[list[bool]] = field(default_factory=list)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_recall_curves(metrics: dict[str, Any], path: str) -> Optional[str]:
    """Recall@K against K for every ``<direction>/recall_curve`` in `metrics`; returns the PNG path."""
    curves = {k.rsplit("/", 1)[0]: v for k, v in metrics.items() if k.endswith("/recall_curve") and v}
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for direction, values in sorted(curves.items()):
        ks = np.arange(1, len(values) + 1)
        ax.plot(ks, values, marker="o", markersize=3, label=direction.replace("_", " "))
    n_items = metrics.get("num_items")
    if n_items:
        ks = np.arange(1, max(len(v) for v in curves.values()) + 1)
        ax.plot(ks, np.minimum(ks / n_items, 1.0), linestyle="--", color="grey", label="chance (text→item)")
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Recall@K")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion(matrix: Sequence[Sequence[int]], class_names: Optional[Sequence[str]], path: str) -> str:
    """Row-normalised confusion matrix heat map (counts annotated when small enough)."""
    plt = _plt()
    cm = np.asarray(matrix, dtype=np.float64)
    n = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = min(12, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("Confusion matrix (row-normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _thumbnail(ax: Any, item: Any, modality: str) -> None:
    """Draw an image or a log-spectrogram of an audio clip into `ax`."""
    if modality == "audio":
        from multimodal.data import load_audio

        wave, sr = load_audio(item, None)
        wave = wave.mean(axis=0) if wave.ndim == 2 else wave
        n_fft = 512
        if len(wave) < n_fft:
            wave = np.pad(wave, (0, n_fft - len(wave)))
        hop = n_fft // 4
        frames = np.lib.stride_tricks.sliding_window_view(wave, n_fft)[::hop] * np.hanning(n_fft)
        spec = np.log(np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-8).T
        ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", extent=(0, len(wave) / sr, 0, sr / 2000))
    else:
        from multimodal.data import load_image

        img = load_image(item, None)
        img = np.asarray(img.convert("RGB")) if hasattr(img, "convert") else np.asarray(img)
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_retrieval_grid(examples: RetrievalExamples, path: str, max_queries: int = 5) -> Optional[str]:
    """Rows of caption queries with their top retrieved items; correct items framed green, others red."""
    n_rows = min(max_queries, len(examples.text_queries))
    if n_rows == 0:
        return None
    n_cols = max(len(r) for r in examples.text_results[:n_rows])
    plt = _plt()
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.9 * n_cols, 2.1 * n_rows), squeeze=False)
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r][c]
            if c >= len(examples.text_results[r]):
                ax.axis("off")
                continue
            _thumbnail(ax, examples.text_results[r][c], examples.modality)
            ok = examples.text_correct[r][c]
            for spine in ax.spines.values():
                spine.set_edgecolor("#1a9850" if ok else "#d73027")
                spine.set_linewidth(3 if ok else 1.5)
            ax.set_title(f"#{c + 1}" + (" ✓" if ok else ""), fontsize=8)
        caption = examples.text_queries[r]
        axes[r][0].set_ylabel("\n".join(_wrap(caption, 28)), fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(f"text → {examples.modality}: top {n_cols} per caption query", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


def _scalar_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        rows.append((key, f"{value:.4f}" if isinstance(value, float) else str(value)))
    return rows


def write_report(
    output_dir: str,
    metrics: dict[str, Any],
    title: str = "Evaluation report",
    examples: Optional[RetrievalExamples] = None,
    confusion: Optional[Sequence[Sequence[int]]] = None,
    class_names: Optional[Sequence[str]] = None,
    notes: Optional[Sequence[str]] = None,
    html: bool = False,
    extra_plots: Optional[Sequence[tuple[str, str]]] = None,
) -> str:
    """Write ``report.md`` (+ PNGs, + ``report.html`` when asked) into `output_dir`; return the Markdown path."""
    os.makedirs(output_dir, exist_ok=True)
    plots: list[tuple[str, str]] = []
    recall = plot_recall_curves(metrics, os.path.join(output_dir, "recall_at_k.png"))
    if recall:
        plots.append(("Recall@K", recall))
    if confusion is not None:
        plots.append(("Confusion matrix", plot_confusion(confusion, class_names, os.path.join(output_dir, "confusion_matrix.png"))))
    if examples is not None:
        grid = plot_retrieval_grid(examples, os.path.join(output_dir, "retrieval_examples.png"))
        if grid:
            plots.append((f"Top retrieved {examples.modality} per caption", grid))
    plots += [(caption, path) for caption, path in (extra_plots or []) if path and os.path.exists(path)]

    md = [f"# {title}", ""]
    for note in notes or []:
        md += [note, ""]
    md += ["| metric | value |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in _scalar_rows(metrics)]
    md.append("")
    for caption, path in plots:
        md += [f"## {caption}", "", f"![{caption}]({os.path.basename(path)})", ""]
    item_rows: list[tuple[str, list[tuple[str, bool]]]] = []
    if examples is not None and examples.item_queries:
        md += [f"## Top captions per {examples.modality} query", ""]
        md += [f"| {examples.modality} | top captions (✓ = a caption of this item) |", "|---|---|"]
        for item, caps, flags in zip(examples.item_queries, examples.item_results, examples.item_correct):
            name = os.path.basename(str(item)) if isinstance(item, (str, os.PathLike)) else f"<{type(item).__name__}>"
            cells = "<br>".join(f"{i + 1}. {'✓ ' if ok else ''}{c.replace('|', '/')}" for i, (c, ok) in enumerate(zip(caps, flags)))
            md.append(f"| {name} | {cells} |")
            item_rows.append((name, list(zip(caps, flags))))
        md.append("")
    md_path = os.path.join(output_dir, "report.md")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    if html:
        _write_html(os.path.join(output_dir, "report.html"), title, notes or [], metrics, plots, item_rows,
                    examples.modality if examples else "item")
    return md_path


def _write_html(path: str, title: str, notes: Sequence[str], metrics: dict[str, Any], plots: list[tuple[str, str]],
                item_rows: list[tuple[str, list[tuple[str, bool]]]], modality: str) -> None:
    esc = html_lib.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px}img{max-width:100%}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    parts += [f"<p>{esc(n)}</p>" for n in notes]
    parts.append("<table><tr><th>metric</th><th>value</th></tr>")
    parts += [f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in _scalar_rows(metrics)]
    parts.append("</table>")
    for caption, p in plots:
        parts.append(f"<h2>{esc(caption)}</h2><img src='{esc(os.path.basename(p))}' alt='{esc(caption)}'>")
    if item_rows:
        parts.append(f"<h2>Top captions per {esc(modality)} query</h2><table>")
        for name, caps in item_rows:
            cells = "<br>".join(f"{i + 1}. {'&#10003; ' if ok else ''}{esc(c)}" for i, (c, ok) in enumerate(caps))
            parts.append(f"<tr><td>{esc(name)}</td><td>{cells}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
