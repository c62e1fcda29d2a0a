"""Training-curve figure (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from typing import Any, Optional

KEPT_STYLE = {"color": "C3", "linestyle": "--", "linewidth": 1.2}


def plot_training_curves(
    train_log: list[dict], history: list[dict], path: str, metric: Optional[str] = None, title: str = "",
    best_epoch: Optional[int] = None,
) -> str:
    """Write a PNG with the training loss per step, the validation loss per epoch and `metric` per epoch; the
    kept epoch (`best_epoch`, the one whose weights the run saved) is marked on both panels."""
    import matplotlib.pyplot as plt

    fig = training_curves_figure(train_log, history, metric, title, best_epoch)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def training_curves_figure(train_log: list[dict], history: list[dict], metric: Optional[str] = None,
                           title: str = "", best_epoch: Optional[int] = None) -> Any:
    """The matplotlib figure `plot_training_curves` saves (two panels: losses per step, `metric` per epoch)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    kept = next((h for h in history if h.get("epoch") == best_epoch), None) if best_epoch is not None else None
    ax = axes[0]
    if train_log:
        ax.plot([e["step"] for e in train_log], [e["loss"] for e in train_log], label="train loss", lw=1.2)
    val = [(h["step"], h["loss"]) for h in history if "loss" in h and h.get("step")]
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    if kept is not None and kept.get("step"):
        _mark(ax, kept["step"], kept.get("loss"), f"kept: epoch {best_epoch}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    if ax.get_legend_handles_labels()[0]:  # nothing to label when no step ran (train.epochs=0)
        ax.legend(loc="best")
    ax.grid(alpha=0.3)
    ax = axes[1]
    if metric and history and any(metric in h for h in history):
        epochs = [h["epoch"] for h in history if metric in h]
        ax.plot(epochs, [h[metric] for h in history if metric in h], "o-", color="C2", label=f"validation {metric}")
        ax.set_ylabel(f"validation {metric}")
        if kept is not None:
            _mark(ax, best_epoch, kept.get(metric), f"kept: epoch {best_epoch}")
        ax.legend(loc="best")
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _mark(ax: Any, x: float, y: Optional[float], label: str) -> None:
    """A dashed vertical line at `x` (and a ring around the point at `y`) labelled `label`."""
    ax.axvline(x, label=label, **KEPT_STYLE)
    if isinstance(y, (int, float)):
        ax.plot([x], [y], "o", markersize=11, markerfacecolor="none", markeredgecolor=KEPT_STYLE["color"],
                markeredgewidth=1.8)
