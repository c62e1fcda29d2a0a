"""Readable evaluation reports: Markdown (and optionally HTML) with PNG plots next to `metrics.json`.

Plots: Recall@K curves for retrieval, a confusion matrix for (zero-shot) classification, and for a few
queries of each retrieval direction the top results: a grid of thumbnails when the gallery is images or
audio (log-spectrograms), a table when it is text.
"""

from __future__ import annotations

import html as html_lib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from multimodal.data.media import load_audio, load_image
from multimodal.evaluation.glossary import describe_metric
from multimodal.evaluation.run_report import Section, run_sections
from multimodal.files import write_text


@dataclass
class RetrievalExamples:
    """Top results for a few queries of one direction (`query` modality -> `gallery` modality)."""

    query: str
    gallery: str
    queries: list[Any] = field(default_factory=list)  # texts, or paths / raw samples
    results: list[list[Any]] = field(default_factory=list)
    correct: list[list[bool]] = field(default_factory=list)


@dataclass
class EvalResult:
    """A task's evaluation of one split: metrics (JSON-ready) and what the report shows besides them."""

    metrics: dict[str, Any]
    examples: list[RetrievalExamples] = field(default_factory=list)
    confusion: Optional[list[list[int]]] = None
    class_names: Optional[list[str]] = None
    notes: list[str] = field(default_factory=list)
    # The training run this split belongs to (its metrics.json record) and its resolved config: when given,
    # the report opens with the run's headline, kept epoch, data, method and config.
    run: Optional[dict[str, Any]] = None
    config: Optional[dict[str, Any]] = None


def write_result(output_dir: str, result: EvalResult, title: str, html: bool = False,
                 extra_plots: Optional[Sequence[tuple[str, str]]] = None) -> str:
    """``report.md`` (+ plots, + ``report.html``) for one evaluated split; the table lists the scalar metrics."""
    return write_report(output_dir, result.metrics, title=title, examples=result.examples, confusion=result.confusion,
                        class_names=result.class_names, notes=result.notes, html=html, extra_plots=extra_plots,
                        run=result.run, config=result.config)


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
    for direction, values in sorted(curves.items()):
        gallery = direction.split("_to_")[-1]
        size = metrics.get(f"num_{gallery}")
        if size:
            ks = np.arange(1, len(values) + 1)
            ax.plot(ks, np.minimum(ks / size, 1.0), linestyle="--", color="grey", linewidth=0.8)
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
    """Draw an image, a log-spectrogram of an audio clip, or a caption into `ax`."""
    if modality == "audio":
        wave, sr = load_audio(item, None)
        wave = wave.mean(axis=0) if wave.ndim == 2 else wave
        n_fft = 512
        if len(wave) < n_fft:
            wave = np.pad(wave, (0, n_fft - len(wave)))
        hop = n_fft // 4
        frames = np.lib.stride_tricks.sliding_window_view(wave, n_fft)[::hop] * np.hanning(n_fft)
        spec = np.log(np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-8).T
        ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", extent=(0, len(wave) / sr, 0, sr / 2000))
    elif modality == "image":
        img = load_image(item, None)
        img = np.asarray(img.convert("RGB")) if hasattr(img, "convert") else np.asarray(img)
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
    else:
        ax.text(0.5, 0.5, "\n".join(_wrap(str(item), 22)), ha="center", va="center", fontsize=7, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_retrieval_grid(examples: RetrievalExamples, path: str, max_queries: int = 5) -> Optional[str]:
    """Rows of queries (first column) with their top results; correct results framed green, others red."""
    n_rows = min(max_queries, len(examples.queries))
    if n_rows == 0:
        return None
    n_cols = max(len(r) for r in examples.results[:n_rows]) + 1
    plt = _plt()
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.9 * n_cols, 2.1 * n_rows), squeeze=False)
    for r in range(n_rows):
        _thumbnail(axes[r][0], examples.queries[r], examples.query)
        axes[r][0].set_title("query", fontsize=8)
        for c in range(1, n_cols):
            ax = axes[r][c]
            if c - 1 >= len(examples.results[r]):
                ax.axis("off")
                continue
            _thumbnail(ax, examples.results[r][c - 1], examples.gallery)
            ok = examples.correct[r][c - 1]
            for spine in ax.spines.values():
                spine.set_edgecolor("#1a9850" if ok else "#d73027")
                spine.set_linewidth(3 if ok else 1.5)
            ax.set_title(f"#{c}" + (" ✓" if ok else ""), fontsize=8)
    fig.suptitle(f"{examples.query} → {examples.gallery}: top {n_cols - 1} per query", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


def _scalar_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(key, value, plain-words meaning) for every scalar metric."""
    rows = []
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        known = describe_metric(key)
        rows.append((key, f"{value:.4f}" if isinstance(value, float) else str(value),
                     f"{known[0]}: {known[1]}" if known else ""))
    return rows


def _sections_md(sections: Sequence[Section]) -> list[str]:
    md: list[str] = []
    for sec in sections:
        md += [f"## {sec.title}", ""]
        for para in sec.paragraphs:
            md += [para, ""]
        if sec.header:
            md += ["| " + " | ".join(sec.header) + " |", "|" + "---|" * len(sec.header)]
            md += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in sec.rows]
            md.append("")
        if sec.code is not None:
            md += ["```yaml", sec.code.rstrip(), "```", ""]
    return md


def _sections_html(sections: Sequence[Section]) -> list[str]:
    esc = html_lib.escape
    parts: list[str] = []
    for sec in sections:
        body = [f"<p>{esc(p)}</p>" for p in sec.paragraphs]
        if sec.header:
            body.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in sec.header) + "</tr>")
            body += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in sec.rows]
            body.append("</table>")
        if sec.code is not None:
            body.append(f"<pre>{esc(sec.code)}</pre>")
        if sec.collapsed:
            parts.append(f"<details><summary><h2>{esc(sec.title)}</h2></summary>{''.join(body)}</details>")
        else:
            parts += [f"<h2>{esc(sec.title)}</h2>", *body]
    return parts


def _name(item: Any) -> str:
    return os.path.basename(str(item)) if isinstance(item, (str, os.PathLike)) else f"<{type(item).__name__}>"


def _text_tables(examples: Sequence[RetrievalExamples]) -> list[tuple[str, list[tuple[str, list[tuple[str, bool]]]]]]:
    """(heading, rows of (query name, [(caption, correct)])) for directions whose gallery is text."""
    tables = []
    for ex in examples:
        if ex.gallery != "text" or not ex.queries:
            continue
        rows = [(_name(q) if ex.query != "text" else str(q), [(str(c), ok) for c, ok in zip(res, flags)])
                for q, res, flags in zip(ex.queries, ex.results, ex.correct)]
        tables.append((f"Top captions per {ex.query} query", rows))
    return tables


def write_report(
    output_dir: str,
    metrics: dict[str, Any],
    title: str = "Evaluation report",
    examples: Sequence[RetrievalExamples] = (),
    confusion: Optional[Sequence[Sequence[int]]] = None,
    class_names: Optional[Sequence[str]] = None,
    notes: Optional[Sequence[str]] = None,
    html: bool = False,
    extra_plots: Optional[Sequence[tuple[str, str]]] = None,
    run: Optional[dict[str, Any]] = None,
    config: Optional[dict[str, Any]] = None,
) -> str:
    """Write ``report.md`` (+ PNGs, + ``report.html`` when asked) into `output_dir`; return the Markdown path.
    With `run` (a training run's metrics.json record, and its `config`) the report opens with the run's
    sections (`multimodal.evaluation.run_report`) before this split's metrics."""
    os.makedirs(output_dir, exist_ok=True)
    plots: list[tuple[str, str]] = []
    recall = plot_recall_curves(metrics, os.path.join(output_dir, "recall_at_k.png"))
    if recall:
        plots.append(("Recall@K", recall))
    if confusion is not None:
        plots.append(("Confusion matrix", plot_confusion(confusion, class_names, os.path.join(output_dir, "confusion_matrix.png"))))
    for ex in examples:
        if ex.gallery == "text":
            continue
        grid = plot_retrieval_grid(ex, os.path.join(output_dir, f"retrieval_{ex.query}_to_{ex.gallery}.png"))
        if grid:
            plots.append((f"Top retrieved {ex.gallery} per {ex.query} query", grid))
    plots += [(caption, path) for caption, path in (extra_plots or []) if path and os.path.exists(path)]

    sections = run_sections(run, config) if run else []
    md = [f"# {title}", ""]
    for note in notes or []:
        md += [note, ""]
    md += _sections_md(sections)
    md += (["## All metrics of this split", ""] if sections else []) + ["| metric | value | meaning |", "|---|---|---|"]
    md += [f"| {k} | {v} | {m} |" for k, v, m in _scalar_rows(metrics)]
    md.append("")
    for caption, path in plots:
        md += [f"## {caption}", "", f"![{caption}]({os.path.basename(path)})", ""]
    tables = _text_tables(examples)
    for heading, rows in tables:
        md += [f"## {heading}", "", "| query | top captions (✓ = paired with the query) |", "|---|---|"]
        for name, caps in rows:
            cells = "<br>".join(f"{i + 1}. {'✓ ' if ok else ''}{c.replace('|', '/')}" for i, (c, ok) in enumerate(caps))
            md.append(f"| {name.replace('|', '/')} | {cells} |")
        md.append("")
    md_path = write_text(os.path.join(output_dir, "report.md"), "\n".join(md))
    if html:
        _write_html(os.path.join(output_dir, "report.html"), title, notes or [], metrics, plots, tables, sections)
    return md_path


def _write_html(path: str, title: str, notes: Sequence[str], metrics: dict[str, Any], plots: list[tuple[str, str]],
                tables: list[tuple[str, list[tuple[str, list[tuple[str, bool]]]]]], sections: Sequence[Section]) -> None:
    esc = html_lib.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:auto;padding:0 12px}"
        "table{border-collapse:collapse;display:block;overflow-x:auto}"
        "td,th{border:1px solid #ccc;padding:3px 8px}img{max-width:100%}summary h2{display:inline}"
        "pre{background:#f6f6f6;padding:8px;overflow-x:auto}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    parts += [f"<p>{esc(n)}</p>" for n in notes]
    parts += _sections_html(sections)
    if sections:
        parts.append("<h2>All metrics of this split</h2>")
    parts.append("<table><tr><th>metric</th><th>value</th><th>meaning</th></tr>")
    parts += [f"<tr><td>{esc(k)}</td><td>{esc(v)}</td><td>{esc(m)}</td></tr>" for k, v, m in _scalar_rows(metrics)]
    parts.append("</table>")
    for caption, p in plots:
        parts.append(f"<h2>{esc(caption)}</h2><img src='{esc(os.path.basename(p))}' alt='{esc(caption)}'>")
    for heading, rows in tables:
        parts.append(f"<h2>{esc(heading)}</h2><table>")
        for name, caps in rows:
            cells = "<br>".join(f"{i + 1}. {'&#10003; ' if ok else ''}{esc(c)}" for i, (c, ok) in enumerate(caps))
            parts.append(f"<tr><td>{esc(name)}</td><td>{cells}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    write_text(path, "\n".join(parts))
