"""The training curves mark the kept epoch (the one whose weights the run saved) on both panels."""

from __future__ import annotations

import matplotlib.pyplot as plt
from PIL import Image

from multimodal.evaluation.plots import plot_training_curves, training_curves_figure

HISTORY = [{"epoch": e, "step": 4 * e, "loss": loss, "macro_f1": f1}
           for e, loss, f1 in ((1, 0.50, 1.0), (2, 0.20, 1.0), (3, 0.02, 1.0), (4, 0.03, 0.9))]
TRAIN_LOG = [{"step": s, "loss": 1.0 / s} for s in range(1, 17)]


def _kept_lines(ax):
    return [line for line in ax.get_lines() if line.get_label().startswith("kept")]


def test_the_kept_epoch_is_marked_on_both_panels(tmp_path):
    fig = training_curves_figure(TRAIN_LOG, HISTORY, metric="macro_f1", best_epoch=3)
    loss_ax, metric_ax = fig.axes
    (on_steps,), (on_epochs,) = _kept_lines(loss_ax), _kept_lines(metric_ax)
    assert on_steps.get_label() == "kept: epoch 3" and list(on_steps.get_xdata()) == [12, 12]  # epoch 3 ends at step 12
    assert list(on_epochs.get_xdata()) == [3, 3]
    assert "kept: epoch 3" in [t.get_text() for t in metric_ax.get_legend().get_texts()]
    rings = [line for line in metric_ax.get_lines() if line.get_marker() == "o" and line.get_markerfacecolor() == "none"]
    assert [(list(r.get_xdata()), list(r.get_ydata())) for r in rings] == [([3], [1.0])]
    plt.close(fig)
    unmarked = training_curves_figure(TRAIN_LOG, HISTORY, metric="macro_f1")
    assert not _kept_lines(unmarked.axes[0]) and not _kept_lines(unmarked.axes[1])
    plt.close(unmarked)
    path = plot_training_curves(TRAIN_LOG, HISTORY, str(tmp_path / "curves.png"), metric="macro_f1", best_epoch=3)
    assert Image.open(path).size[0] > 500


def test_no_validation_and_no_steps_still_draw(tmp_path):
    path = plot_training_curves([], [], str(tmp_path / "c.png"), metric="macro_f1", best_epoch=None)
    assert Image.open(path).size[0] > 0
    fig = training_curves_figure(TRAIN_LOG, [{"epoch": 1, "step": 16}], metric="macro_f1", best_epoch=1)
    assert _kept_lines(fig.axes[0]) and not _kept_lines(fig.axes[1])  # no metric recorded: nothing to ring there
    plt.close(fig)
