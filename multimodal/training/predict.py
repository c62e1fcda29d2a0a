"""One prediction loop for validation, test-set evaluation and the evaluate CLI, on any number of processes.

`predict(model, loader, accelerator)` runs the model over a loader prepared by `accelerator` and gathers
per-example outputs with ``accelerator.gather_for_metrics``, so under DDP every example is counted once
(the duplicates the distributed sampler pads in are dropped) and every process gets the full result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch


def forward_batch(model: Any, batch: dict) -> Any:
    """Call a model with the batch contract of `multimodal.data.loading`."""
    return model(inputs=batch.get("inputs") or {}, present=batch.get("present"), labels=batch.get("labels"),
                 features=batch.get("features"))


@torch.no_grad()
def predict(model: Any, loader: Any, accelerator: Any, batch_loss: bool = True,
            forward_fn: Optional[Callable[[Any, dict], Any]] = None) -> dict[str, torch.Tensor]:
    """Gathered ``index``, ``logits``, ``labels``, ``present.<modality>`` and ``embeddings.<modality>`` over a
    prepared loader (on CPU).

    With `batch_loss`, ``loss`` is the example-weighted mean of the batch losses across processes (for losses
    that depend on the batch, such as InfoNCE); tasks whose loss is a mean over examples recompute it exactly
    from the gathered outputs instead. `forward_fn(model, batch)` replaces `forward_batch` (e.g. an attack
    for robust accuracy, `multimodal.training.adversarial.Adversary.attacked_output`).
    """
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    loss_sum = torch.zeros((), device=accelerator.device)
    loss_count = torch.zeros((), device=accelerator.device)
    forward = forward_fn or forward_batch
    for batch in loader:
        out = forward(model, batch)
        local: dict[str, torch.Tensor] = {"index": batch["index"]}
        if getattr(out, "logits", None) is not None:
            local["logits"] = out.logits.float()
        if batch.get("labels") is not None:
            local["labels"] = batch["labels"]
        for m, mask in (batch.get("present") or {}).items():
            local[f"present.{m}"] = mask
        for m, emb in (getattr(out, "embeddings", None) or {}).items():
            local[f"embeddings.{m}"] = emb.float()
        if batch_loss and getattr(out, "loss", None) is not None:
            n = batch["index"].shape[0]
            loss_sum += out.loss.detach().float() * n
            loss_count += n
        for k, v in accelerator.gather_for_metrics(local).items():
            parts.setdefault(k, []).append(v.cpu())
    result = _first_of_each_index({k: torch.cat(v) for k, v in parts.items()})
    if batch_loss:
        totals = accelerator.reduce(torch.stack([loss_sum, loss_count]), reduction="sum")
        if totals[1] > 0:
            result["loss"] = (totals[0] / totals[1]).cpu()
    model.train(was_training)
    return result


def _first_of_each_index(result: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep each example once: when a dataset skipped rows while loading, the last gathered batch can be short
    on one process, and accelerate's trimming of the padded duplicates then keeps one of them."""
    index = result.get("index")
    if index is None or index.numel() == torch.unique(index).numel():
        return result
    order = torch.argsort(index, stable=True)
    ordered = index[order]
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[1:] = ordered[1:] != ordered[:-1]
    keep = torch.sort(order[first]).values
    return {k: v[keep] for k, v in result.items()}


def evaluation_metrics(model: Any, loader: Any, accelerator: Any, compute_metrics_fn: Optional[Callable] = None,
                       batch_loss: bool = True) -> dict[str, float]:
    """`compute_metrics_fn` of the gathered predictions, plus ``num_examples`` / ``num_unique_examples`` and
    the mean batch loss when the metrics do not give one."""
    preds = predict(model, loader, accelerator, batch_loss=batch_loss)
    metrics = dict(compute_metrics_fn(preds)) if compute_metrics_fn is not None else {}
    if "index" in preds:
        metrics["num_examples"] = int(preds["index"].shape[0])
        metrics["num_unique_examples"] = int(torch.unique(preds["index"]).numel())
    if "loss" in preds and "loss" not in metrics:
        metrics["loss"] = float(preds["loss"])
    return metrics
