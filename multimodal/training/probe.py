"""Linear probe on frozen features: standardised concatenation + an exactly fitted logistic regression.

The model becomes encoders -> `fusion.StandardizedConcat` -> a linear `TaskHead`, so the probe saves, reloads
and evaluates like every other classifier (the evaluate CLI included). Fitting minimises the same objective
as scikit-learn's ``LogisticRegression(C=C)`` (multinomial cross-entropy summed over examples times C, plus
half the squared L2 norm of the weights, intercept unpenalised) with full-batch L-BFGS in float64. C is
chosen on the validation split by the task's selection metric (ties: the stronger regularisation), then the
probe is refitted on train+validation with that C (``train.refit_full``, on by default for the probe).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from fusion import StandardizedConcat
from multimodal.evaluation.metrics import improves
from multimodal.models.heads import TaskHead

DEFAULT_CS = [10.0 ** (k / 2) for k in range(-8, 5)]  # 1e-4 ... 1e2, half-decade steps


def as_probe_model(model: Any, label_type: str) -> Any:
    """Swap the model's fusion and head for a standardised concatenation and a linear head (no dropout)."""
    dims = {m: int(enc.output_dim) for m, enc in model.encoders.items()}
    model.fusion = StandardizedConcat(dims)
    model.head = TaskHead(model.fusion.output_dim, model.head.num_outputs, label_type=label_type, hidden_dim=None, dropout=0.0)
    model.freeze_encoders()
    return model


def _objective(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, c: float,
               multi_label: bool) -> torch.Tensor:
    logits = x @ w.t() + b
    if multi_label:
        data = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum")
    else:
        data = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
    return (data + 0.5 * (w * w).sum() / c) / x.shape[0]  # scikit-learn's objective / (C * n): same minimiser


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_outputs: int, c: float, multi_label: bool = False,
                 init: Optional[tuple[torch.Tensor, torch.Tensor]] = None, max_iter: int = 500,
                 tol: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-regularised logistic regression (softmax, or per-class sigmoid for multi-label) fitted by L-BFGS.

    `x` [n, d] float, `y` [n] class ids (or [n, K] 0/1 for multi-label); returns float64 (W [K, d], b [K]).
    """
    x = x.double()
    y = y.double() if multi_label else y.long()
    if init is None:
        w = torch.zeros(num_outputs, x.shape[1], dtype=torch.float64)
        b = torch.zeros(num_outputs, dtype=torch.float64)
    else:
        w, b = init[0].detach().clone().double(), init[1].detach().clone().double()
    w.requires_grad_(True)
    b.requires_grad_(True)
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-9,
                                  history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = _objective(x, y, w, b, c, multi_label)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return w.detach(), b.detach()


@torch.no_grad()
def collect_features(model: Any, loader: Any, accelerator: Any) -> dict[str, torch.Tensor]:
    """Raw concatenated features, presence and labels over a prepared loader, gathered across processes."""
    fusion = model.fusion
    parts: dict[str, list[torch.Tensor]] = {}
    was_training = model.training
    model.eval()
    for batch in loader:
        feats = model._features(batch.get("inputs") or {}, batch.get("features"), required=model.modalities)
        present = fusion.presence(feats, batch.get("present"))
        raw, keep = fusion.concat(feats, present)
        local = {"raw": raw.float(), "keep": keep, "labels": batch["labels"], "index": batch["index"]}
        for k, v in accelerator.gather_for_metrics(local).items():
            parts.setdefault(k, []).append(v.cpu())
    model.train(was_training)
    return {k: torch.cat(v) for k, v in parts.items()}


def fit_probe(model: Any, task: Any, accelerator: Any, train_loader: Any, val_loader: Any, val_dataset: Any,
              metric: str, mode: str, cs: Optional[list[float]] = None, refit: bool = True) -> dict[str, Any]:
    """Fit the probe's statistics and head in place; returns the C sweep and what was chosen."""
    fusion, head = model.fusion, model.head
    multi_label = head.label_type == "multi_label"
    if head.label_type not in ("single_label", "multi_label"):
        raise ValueError(f"the linear probe fits classifiers; model.task={head.label_type!r} is not supported")
    train = collect_features(model, train_loader, accelerator)
    fusion.set_statistics(train["raw"], train["keep"])
    x_train = fusion.standardize(train["raw"], train["keep"])
    cs = sorted(float(c) for c in (cs or DEFAULT_CS))
    k = head.num_outputs
    sweep: list[dict[str, Any]] = []
    chosen: Optional[float] = None
    solution = None
    if val_loader is not None:
        val = collect_features(model, val_loader, accelerator)
        x_val = fusion.standardize(val["raw"], val["keep"])
        best, best_loss, init = None, None, None
        for c in cs:  # warm-started along the path, weakest regularisation last
            w, b = fit_logistic(x_train, train["labels"], k, c, multi_label, init=init)
            init = (w, b)
            logits = (x_val.double() @ w.t() + b).float()
            preds = {"logits": logits, "labels": val["labels"], "index": val["index"]}
            metrics = task.evaluate(preds, val_dataset, model, full=False).metrics
            sweep.append({"C": c, **{n: v for n, v in metrics.items() if isinstance(v, float)}})
            if improves(metrics.get(metric), best, mode, loss=metrics.get("loss"), best_loss=best_loss):
                best, best_loss, chosen, solution = metrics.get(metric), metrics.get("loss"), c, (w, b)  # ties: lower loss, then smaller C
    if chosen is None:
        chosen = 1.0
        solution = fit_logistic(x_train, train["labels"], k, chosen, multi_label)
    refitted = bool(refit and val_loader is not None)
    if refitted:
        raw = torch.cat([train["raw"], val["raw"]])
        keep = torch.cat([train["keep"], val["keep"]])
        fusion.set_statistics(raw, keep)
        x_all = fusion.standardize(raw, keep)
        solution = fit_logistic(x_all, torch.cat([train["labels"], val["labels"]]), k, chosen, multi_label)
    w, b = solution
    linear = head.net[-1]
    linear.weight.data.copy_(w.to(linear.weight.dtype))
    linear.bias.data.copy_(b.to(linear.bias.dtype))
    return {"C": chosen, "refit_on_validation": refitted, "sweep": sweep, "num_train": int(train["raw"].shape[0])}
