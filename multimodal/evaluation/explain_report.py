"""The explanation report: ``report.html`` with heat maps over images and spectrograms, highlighted tokens,
modality contributions and the deletion check, plus ``explanations.json`` with every number."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from multimodal.evaluation.explain import Attribution, Explanation
from multimodal.files import write_json, write_text


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _grid(count: int, height: int, width: int) -> Optional[tuple[int, int]]:
    """(rows, cols) of a token grid of `count` tokens over an input of `height` x `width` (square stride)."""
    for stride in (64, 32, 16, 8, 4, 2, 1):
        rows, cols = -(-height // stride), -(-width // stride)
        if rows * cols == count:
            return rows, cols
    return None


def _upsample(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rows = np.minimum((np.arange(shape[0]) * values.shape[0]) // shape[0], values.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) * values.shape[1]) // shape[1], values.shape[1] - 1)
    return values[np.ix_(rows, cols)]


def _positive(values: np.ndarray) -> np.ndarray:
    pos = np.clip(values, 0, None)
    return pos / pos.max() if pos.max() > 0 else pos


def plot_map(attr: Attribution, path: str, title: str) -> str:
    """Input | attribution heat map over it | attention over it (attention fusion), as one PNG."""
    plt = _plt()
    spectrogram = attr.kind == "spectrogram"
    base = attr.display
    grid = _grid(len(attr.attention), *base.shape[:2]) if attr.attention is not None else None
    panels = 3 if grid else 2
    fig, axes = plt.subplots(1, panels, figsize=(3.6 * panels, 3.4 if not spectrogram else 2.8), squeeze=False)
    show = {"origin": "lower", "aspect": "auto", "cmap": "magma"} if spectrogram else {}
    axes[0][0].imshow(base, **show)
    axes[0][0].set_title("log-mel input" if spectrogram else "input", fontsize=9)
    axes[0][1].imshow(base, **({**show, "cmap": "gray"} if spectrogram else {}))
    axes[0][1].imshow(_positive(attr.values), cmap="jet", alpha=0.55, origin="lower" if spectrogram else None,
                      aspect="auto" if spectrogram else None)
    axes[0][1].set_title("integrated gradients (positive)", fontsize=9)
    if grid:
        attention = _upsample(np.asarray(attr.attention).reshape(grid), base.shape[:2])
        axes[0][2].imshow(base, **({**show, "cmap": "gray"} if spectrogram else {}))
        axes[0][2].imshow(attention / max(attention.max(), 1e-12), cmap="viridis", alpha=0.55,
                          origin="lower" if spectrogram else None, aspect="auto" if spectrogram else None)
        axes[0][2].set_title("[CLS] attention", fontsize=9)
    for ax in axes[0]:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_frames(attr: Attribution, path: str, title: str) -> str:
    """Attribution per 10 ms frame of an audio input (encoders without a spectrogram front end)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 2.4))
    ax.bar(np.arange(len(attr.values)), attr.values, width=1.0, color=np.where(attr.values >= 0, "#1a9850", "#d73027"))
    ax.set_xlabel("frame (10 ms)")
    ax.set_ylabel("attribution")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def token_html(tokens: Sequence[str], values: np.ndarray, attention: Optional[np.ndarray] = None) -> str:
    """Tokens as spans shaded by attribution (green for, red against the class); attention as a second line."""
    scale = float(np.abs(values).max()) or 1.0
    spans = []
    for tok, v in zip(tokens, values):
        colour = "26,152,80" if v >= 0 else "215,48,39"
        spans.append(f"<span title='{v:+.4f}' style='background:rgba({colour},{abs(v) / scale:.2f});padding:1px 3px;"
                     f"margin:1px;border-radius:3px'>{html.escape(tok)}</span>")
    out = "<div class='tokens'>" + "".join(spans) + "</div>"
    if attention is not None and len(attention) == len(tokens):
        top = float(np.max(attention)) or 1.0
        out += "<div class='tokens'>attention: " + "".join(
            f"<span title='{a:.4f}' style='background:rgba(68,1,84,{a / top * 0.6:.2f});color:#000;padding:1px 3px;"
            f"margin:1px'>{html.escape(t)}</span>" for t, a in zip(tokens, attention)) + "</div>"
    return out


def _bars(values: dict[str, float]) -> str:
    scale = max([abs(v) for v in values.values()] + [1e-9])
    rows = []
    for m, v in values.items():
        width = int(160 * abs(v) / scale)
        colour = "#1a9850" if v >= 0 else "#d73027"
        rows.append(f"<tr><td>{html.escape(m)}</td><td><div style='width:{width}px;height:12px;background:{colour}'></div>"
                    f"</td><td>{v:+.4f}</td></tr>")
    return "<table class='bars'>" + "".join(rows) + "</table>"


def explanation_record(exp: Explanation, names: Sequence[str], source: str, checks: dict[str, Any]) -> dict[str, Any]:
    """The JSON record of one explanation (maps summarised; tokens and their scores in full)."""
    record: dict[str, Any] = {
        "row": source, "target": names[exp.target], "label": names[exp.label] if exp.label is not None else None,
        "probabilities": dict(zip(names, exp.probabilities)), "modality_shapley": exp.shapley,
        "p_all_modalities": exp.p_all, "p_no_modality": exp.p_none, "attention_share": exp.attention_share,
        "deletion_check": checks, "attributions": {}}
    for m, a in exp.attributions.items():
        entry: dict[str, Any] = {"kind": a.kind, "sum": float(a.values.sum()), "shape": list(a.values.shape)}
        if a.kind == "tokens":
            entry["tokens"] = [[t, float(v)] for t, v in zip(a.display, a.values)]
        elif a.kind == "spectrogram":
            entry["frame_importance"] = a.values.sum(axis=0).tolist()
        record["attributions"][m] = entry
    return record


def write_explain_report(output: str, explanations: list[Explanation], names: Sequence[str], sources: list[str],
                         checks: list[dict[str, Any]], title: str, notes: Sequence[str] = ()) -> str:
    """Write ``report.html``, the PNG maps and ``explanations.json`` into `output`; returns the HTML path."""
    os.makedirs(output, exist_ok=True)
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>{esc(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}.ex{border-top:1px solid #ccc;"
             "padding:8px 0}img{max-width:100%}.tokens{line-height:2em}table.bars td{padding:1px 6px}</style>",
             "</head><body>", f"<h1>{esc(title)}</h1>", *[f"<p>{esc(n)}</p>" for n in notes]]
    records = []
    for n, (exp, source, check) in enumerate(zip(explanations, sources, checks)):
        truth = f", label <b>{esc(names[exp.label])}</b>" if exp.label is not None else ""
        top = sorted(range(len(names)), key=lambda c: -exp.probabilities[c])[:5]
        probs = ", ".join(f"{esc(names[c])} {exp.probabilities[c]:.3f}" for c in top)
        parts += ["<div class='ex'>", f"<h2>{n + 1}. {esc(source)}</h2>",
                  f"<p>explained class <b>{esc(names[exp.target])}</b>{truth}; probabilities: {probs}</p>"]
        if exp.shapley:
            parts += ["<h3>Modality contributions (exact Shapley values of p(class))</h3>", _bars(exp.shapley),
                      f"<p>p with every modality {exp.p_all:.4f}, with none {exp.p_none:.4f}; the contributions add up "
                      f"to the difference.</p>"]
        if exp.attention_share:
            parts.append("<p>[CLS] attention share: " + ", ".join(f"{esc(m)} {v:.3f}" for m, v in exp.attention_share.items())
                         + "</p>")
        for m, attr in exp.attributions.items():
            parts.append(f"<h3>{esc(m)}: integrated gradients</h3>")
            if attr.kind == "tokens":
                parts.append(token_html(attr.display, attr.values, attr.attention))
            else:
                name = f"ex{n + 1:03d}_{m}.png"
                if attr.kind == "frames":
                    plot_frames(attr, os.path.join(output, name), f"{m}: attribution per frame")
                else:
                    plot_map(attr, os.path.join(output, name), f"{m}: {names[exp.target]}")
                parts.append(f"<img src='{name}' alt='{esc(m)} attribution'>")
            if m in check:
                c = check[m]
                parts.append(f"<p>deletion check ({c['fraction']:.0%} of the {c['unit']}): p {c['p']:.4f} &rarr; "
                             f"{c['p_top_deleted']:.4f} without the top-attributed, {c['p_random_deleted']:.4f} without "
                             f"random ones</p>")
        parts.append("</div>")
        records.append(explanation_record(exp, names, source, check))
    parts.append("</body></html>")
    write_json(os.path.join(output, "explanations.json"), {"title": title, "notes": list(notes), "examples": records})
    return write_text(os.path.join(output, "report.html"), "\n".join(parts))
