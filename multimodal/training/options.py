"""What a `Trainer` needs besides the model, the `TrainConfig` and the loaders: how to score and select epochs,
what to report, which loss to train on, and where in the schedule to start."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import torch


@dataclass
class TrainerOptions:
    """Options of a `Trainer` (each may also be passed to it as a keyword of the same name).

    `compute_metrics_fn` gets the gathered validation outputs of `predict` (``index``, ``logits``, ``labels``,
    ``embeddings.<modality>``, ``loss``) and returns metrics; `metric_for_best` picks the metric that selects the
    best epoch when ``config.metric_for_best`` is "auto" (default: the loss), and `metric_mode_for_best`
    ("min"/"max") its direction when ``config.metric_mode`` is "auto" (default: losses, errors and ranks go down,
    the rest up). `unfreeze_after_epochs` unfreezes frozen encoders from that epoch on; `eval_batch_loss=False`
    skips the batch-loss mean when `compute_metrics_fn` computes the loss itself. `callbacks` are called as
    ``callback(trainer, record)`` after every epoch's evaluation; one may raise to end the run (e.g.
    ``optuna.TrialPruned``). `loss_fn(batch, output)`, if given, is the training loss instead of ``output.loss``
    (distillation, FedProx). `start_epoch` starts the epochs and the LR schedule there (a federated client's
    later rounds); `tracker_config` and `run_name` go to the experiment tracker.
    """

    compute_metrics_fn: Optional[Callable[[dict[str, torch.Tensor]], dict[str, float]]] = None
    metric_for_best: Optional[str] = None
    metric_mode_for_best: Optional[str] = None
    unfreeze_after_epochs: Optional[int] = None
    eval_batch_loss: bool = True
    callbacks: Optional[list[Callable[[Any, dict], None]]] = field(default_factory=list)
    loss_fn: Optional[Callable[[dict, Any], torch.Tensor]] = None
    start_epoch: int = 0
    tracker_config: Optional[dict] = None
    run_name: str = "run"

    @classmethod
    def merged(cls, options: Optional[TrainerOptions], keywords: dict[str, Any]) -> TrainerOptions:
        """`options` (default: all defaults) with the fields named in `keywords` replaced."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(keywords) - known)
        if unknown:
            raise TypeError(f"Trainer got unexpected keyword arguments {unknown}; options are {sorted(known)}")
        return dataclasses.replace(options or cls(), **keywords)
