"""Training-curve figure (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from typing import Optional


def plot_training_curves(
    train_log: list[dict], history: list[dict], path: str, metric: Optional[str] = None, title: str = ""
) -> str:
    """Write a PNG with the training loss per step, the validation loss per epoch and `metric` per epoch."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ax = axes[0]
    if train_log:
        steps_per_epoch = None
        if history and history[0].get("step"):
            steps_per_epoch = history[0]["step"]
        ax.plot([e["step"] for e in train_log], [e["loss"] for e in train_log], label="train loss", lw=1.2)
        if steps_per_epoch:
            val = [(h["step"], h["loss"]) for h in history if "loss" in h]
            if val:
                ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    if ax.get_legend_handles_labels()[0]:  # nothing to label when no step ran (train.epochs=0)
        ax.legend(loc="best")
    ax.grid(alpha=0.3)
    ax = axes[1]
    if metric and history and any(metric in h for h in history):
        epochs = [h["epoch"] for h in history if metric in h]
        ax.plot(epochs, [h[metric] for h in history if metric in h], "o-", color="C2")
        ax.set_ylabel(f"validation {metric}")
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
