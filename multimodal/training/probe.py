"""Linear probe on frozen features: standardised concatenation + scikit-learn's logistic regression, C by k-fold CV.

The model becomes encoders -> `fusion.StandardizedConcat` -> a linear `TaskHead`, so the probe saves, reloads
and evaluates like every other classifier (the evaluate CLI included). The head is scikit-learn's
``LogisticRegression(C=C)`` (lbfgs, multinomial; one binary regression per class for multi-label) fitted on the
standardised training features and copied into the linear layer.

C is chosen by stratified k-fold cross-validation over all training rows (``StratifiedGroupKFold`` when the data
has groups, so no group is on both sides of a fold), repeated with other shuffles (``train.probe_cv_repeats``),
by mean held-out accuracy, ties going to the lower log-loss, then the smaller C (``train.probe_select``; or by
log-loss alone; BENCHMARKS.md section 10e measured both on the real dev sets), then the probe is refitted on
every training row, and on train+validation when ``train.refit_full`` says so (the default for the probe). The validation
split, when there is one, scores the chosen C fitted on the training rows alone. Where too few rows or groups
leave no cross-validation, C is chosen on validation, else 1.0 (scikit-learn's default), and the run says so.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from threadpoolctl import threadpool_limits

from fusion import StandardizedConcat
from multimodal.evaluation.metrics import improves
from multimodal.models.heads import TaskHead

DEFAULT_CS = sorted({*np.logspace(-4, 4, 10).tolist(), 1.0})
"""LogisticRegressionCV's default grid (10 values, 1e-4 .. 1e4) plus LogisticRegression's default C=1."""
CV_FOLDS = 5
CV_REPEATS = 3
ABSENT_LOGIT = -30.0  # bias of a class absent from the rows a fold trains on (weights zero)
SELECTION = ("log_loss", "accuracy")


def as_probe_model(model: Any, label_type: str) -> Any:
    """Swap the model's fusion and head for a standardised concatenation and a linear head (no dropout)."""
    dims = {m: int(enc.output_dim) for m, enc in model.encoders.items()}
    model.fusion = StandardizedConcat(dims)
    model.head = TaskHead(model.fusion.output_dim, model.head.num_outputs, label_type=label_type, hidden_dim=None, dropout=0.0)
    model.freeze_encoders()
    return model


class LogisticPath:
    """scikit-learn logistic regressions fitted along a path of Cs, each warm-started from the previous solution.

    `fit(x, y, c)` returns (W [K, d], b [K]) float64 for a K-way softmax (a binary fit is written as two
    opposite halves, the same probabilities) or K independent sigmoids (`multi_label`, y [n, K] of 0/1)."""

    def __init__(self, num_outputs: int, multi_label: bool = False, max_iter: int = 1000, tol: float = 1e-4) -> None:
        self.k, self.multi_label = num_outputs, multi_label
        self.estimators: dict[int, LogisticRegression] = {}
        self.max_iter, self.tol = max_iter, tol

    def _estimator(self, key: int, c: float) -> LogisticRegression:
        est = self.estimators.setdefault(key, LogisticRegression(max_iter=self.max_iter, tol=self.tol, warm_start=True))
        return est.set_params(C=c)

    def fit(self, x: np.ndarray, y: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
        """The regression at `c` (one BLAS thread: these small solves run many times slower threaded)."""
        w, b = np.zeros((self.k, x.shape[1])), np.zeros(self.k)
        with warnings.catch_warnings(), threadpool_limits(1, user_api="blas"):
            warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter reached at a tiny penalty: still usable
            if self.multi_label:
                for j in range(self.k):
                    column = y[:, j]
                    if column.min() == column.max():  # one value in every row: a constant, smoothed
                        b[j] = math.log(2 * len(column) + 1) * (1 if column[0] else -1)
                        continue
                    est = self._estimator(j, c).fit(x, column)
                    w[j], b[j] = est.coef_[0], est.intercept_[0]
                return w, b
            present = np.unique(y)
            b[:] = ABSENT_LOGIT
            if len(present) == 1:
                b[present[0]] = 0.0
                return w, b
            est = self._estimator(-1, c).fit(x, y)
            coef, intercept = est.coef_, est.intercept_
            if len(present) == 2:  # one logit difference -> two opposite halves, the same softmax
                coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
            w[est.classes_], b[est.classes_] = coef, intercept
        return w, b


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_outputs: int, c: float, multi_label: bool = False,
                 init: Optional[tuple[torch.Tensor, torch.Tensor]] = None, max_iter: int = 1000,
                 tol: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-regularised logistic regression at `c` (scikit-learn's objective and solver); float64 (W [K, d], b [K]).

    `x` [n, d], `y` [n] class ids (or [n, K] 0/1 for multi-label). `init` is accepted for compatibility and
    ignored (warm starts along a path of Cs: `LogisticPath`)."""
    del init
    w, b = LogisticPath(num_outputs, multi_label, max_iter, tol).fit(x.double().numpy(), y.numpy(), c)
    return torch.from_numpy(w), torch.from_numpy(b)


def fit_path(num_outputs: int, multi_label: bool, x: np.ndarray, y: np.ndarray, grid: list[float],
             c: float) -> tuple[np.ndarray, np.ndarray]:
    """The regression at `c` reached as `cv_sweep` reaches it: along the ascending `grid` from its smallest C,
    each fit warm-started from the one before. That is the solution cross-validation scored; a cold start at a
    weak penalty stops elsewhere (the solver's tolerance) and scored up to 2.5 points lower on the real dev sets
    (BENCHMARKS.md, section 10e)."""
    path = LogisticPath(num_outputs, multi_label)
    for value in sorted(v for v in grid if v < c):
        path.fit(x, y, value)
    return path.fit(x, y, c)


def cv_folds(labels: np.ndarray, groups: Optional[np.ndarray] = None, k: int = CV_FOLDS,
             seed: int = 0) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """Stratified (grouped, with `groups`) k-fold splits of the rows and a note on the scheme; fewer folds where
    classes or groups are too few (no folds at all, with the reason, where not even two are possible)."""
    strata = labels if labels.ndim == 1 else np.zeros(len(labels), dtype=int)  # multi-label: not stratified
    counts = np.unique(strata, return_counts=True)[1]
    if groups is not None:
        n_groups = len(np.unique(groups))
        folds = min(k, n_groups)
        if folds < 2:
            return [], f"no cross-validation: the training rows hold {n_groups} group"
        splitter: Any = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
        what = f"{folds}-fold StratifiedGroupKFold over {n_groups} groups"
    else:
        folds = min(k, int(counts.min())) if len(counts) > 1 else min(k, len(labels))
        if folds < 2:
            return [], f"no cross-validation: a class has {int(counts.min())} training row"
        splitter, what = StratifiedKFold(folds, shuffle=True, random_state=seed), f"{folds}-fold StratifiedKFold"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has fewer members": folds still valid
        splits = list(splitter.split(np.zeros(len(labels)), strata, groups))
    if any(len(test) == 0 or len(train) == 0 for train, test in splits):
        return [], f"no cross-validation: {len(labels)} training rows cannot fill {folds} folds"
    short = f" (fewer than {k}: too few {'groups' if groups is not None else 'rows in a class'})" if folds < k else ""
    return splits, f"C chosen by {what}{short} over {len(labels)} training rows"


def repeated_cv_folds(labels: np.ndarray, groups: Optional[np.ndarray] = None, k: int = CV_FOLDS, seed: int = 0,
                      repeats: int = CV_REPEATS) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """`cv_folds` reshuffled `repeats` times (seeds `seed`, `seed + 1`, ...), all splits in one list: C's choice
    then rests on more held-out rows."""
    splits, note = cv_folds(labels, groups, k, seed)
    if splits and repeats > 1:
        splits += [s for r in range(1, repeats) for s in cv_folds(labels, groups, k, seed + r)[0]]
        note += f", repeated {repeats} times"
    return splits, note


def scores(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray, multi_label: bool) -> dict[str, float]:
    """Mean log-loss and accuracy of the regression (W, b) on rows `x`, `y` (multi-label: per label)."""
    logits = torch.from_numpy(x @ w.T + b)
    if multi_label:
        target = torch.from_numpy(y).double()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target).item()
        return {"log_loss": loss, "accuracy": float(((logits > 0).double() == target).double().mean())}
    target = torch.from_numpy(y).long()
    loss = torch.nn.functional.cross_entropy(logits, target).item()
    return {"log_loss": loss, "accuracy": float((logits.argmax(1) == target).double().mean())}


def cv_sweep(x: np.ndarray, y: np.ndarray, folds: list, cs: list[float], num_outputs: int,
             multi_label: bool = False) -> list[dict[str, float]]:
    """Mean held-out log-loss and accuracy of every C over the folds (each fold warm-started along the Cs)."""
    totals = [{"log_loss": 0.0, "accuracy": 0.0} for _ in cs]
    for train, test in folds:
        path = LogisticPath(num_outputs, multi_label)
        for i, c in enumerate(cs):
            w, b = path.fit(x[train], y[train], c)
            for name, value in scores(w, b, x[test], y[test], multi_label).items():
                totals[i][name] += value * len(test)
    n = sum(len(test) for _, test in folds)
    return [{"C": c, **{name: v / n for name, v in t.items()}} for c, t in zip(cs, totals)]


def choose_c(sweep: list[dict[str, float]], select: str = "log_loss") -> float:
    """The C of the sweep with the lowest log-loss, or the highest accuracy (ties: lower log-loss, smaller C)."""
    if select == "log_loss":
        return min(sweep, key=lambda row: (row["log_loss"], row["C"]))["C"]
    return min(sweep, key=lambda row: (-row["accuracy"], row["log_loss"], row["C"]))["C"]


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


def _validation_sweep(path: LogisticPath, x: np.ndarray, y: np.ndarray, val: dict, cs: list[float], task: Any,
                      model: Any, val_dataset: Any, metric: str, mode: str) -> tuple[list[dict[str, Any]], float]:
    """The C sweep on the validation split by the task's selection metric (ties: lower loss, then smaller C)."""
    sweep: list[dict[str, Any]] = []
    best, best_loss, chosen = None, None, cs[0]
    for c in cs:
        metrics = _evaluate(path.fit(x, y, c), val, task, model, val_dataset)
        sweep.append({"C": c, **{n: v for n, v in metrics.items() if isinstance(v, float)}})
        if improves(metrics.get(metric), best, mode, loss=metrics.get("loss"), best_loss=best_loss):
            best, best_loss, chosen = metrics.get(metric), metrics.get("loss"), c
    return sweep, chosen


def _evaluate(solution: tuple[np.ndarray, np.ndarray], val: dict, task: Any, model: Any,
              val_dataset: Any) -> dict[str, Any]:
    """The task's validation metrics of the regression `solution` on the standardised validation features."""
    w, b = solution
    logits = torch.from_numpy(val["x"] @ w.T + b).float()
    preds = {"logits": logits, "labels": val["labels"], "index": val["index"]}
    return task.evaluate(preds, val_dataset, model, full=False).metrics


def _fallback_c(cs: list[float], given: bool) -> tuple[float, str]:
    """C without cross-validation or validation: the given value closest to 1.0 (log scale), else 1.0."""
    if not given:
        return 1.0, "C=1 (scikit-learn's default)"
    c = min(cs, key=lambda v: (abs(math.log10(v)), v))
    return c, f"C={c:g}, of train.probe_cs the closest to scikit-learn's default 1" if len(cs) > 1 else f"C={c:g}"


def fit_probe(model: Any, task: Any, accelerator: Any, train_loader: Any, val_loader: Any, val_dataset: Any,
              metric: str, mode: str, cs: Optional[list[float]] = None, refit: bool = True,
              groups: Optional[list[Any]] = None, select: str = "accuracy", folds: int = CV_FOLDS,
              seed: int = 0, repeats: int = CV_REPEATS) -> dict[str, Any]:
    """Fit the probe's statistics and head in place (C by cross-validation, see the module docstring).

    `groups` holds each training dataset position's group (None: rows are independent). Returns what was
    chosen and how: C, the sweep, the scheme's note, the validation metrics of the chosen C before any refit."""
    fusion, head = model.fusion, model.head
    multi_label = head.label_type == "multi_label"
    if head.label_type not in ("single_label", "multi_label"):
        raise ValueError(f"the linear probe fits classifiers; model.task={head.label_type!r} is not supported")
    train = collect_features(model, train_loader, accelerator)
    fusion.set_statistics(train["raw"], train["keep"])
    x = fusion.standardize(train["raw"], train["keep"]).double().numpy()
    y = train["labels"].numpy()
    grid = sorted(float(c) for c in (cs or DEFAULT_CS))
    val = None
    if val_loader is not None:
        val = collect_features(model, val_loader, accelerator)
        val["x"] = fusion.standardize(val["raw"], val["keep"]).double().numpy()
    row_groups = None if groups is None else np.asarray([str(groups[int(i)]) for i in train["index"]])
    splits, note = repeated_cv_folds(y, row_groups, folds, seed, repeats)
    if splits:
        sweep, chosen_by = cv_sweep(x, y, splits, grid, head.num_outputs, multi_label), f"cross-validated {select}"
        chosen = choose_c(sweep, select)
    elif val is not None:
        sweep, chosen = _validation_sweep(LogisticPath(head.num_outputs, multi_label), x, y, val, grid, task, model, val_dataset, metric, mode)
        note, chosen_by = f"{note}; C chosen on the validation split ({len(val['x'])} rows)", f"validation {metric}"
    else:
        sweep = []
        chosen, how = _fallback_c(grid, cs is not None)
        note, chosen_by = f"{note} and no validation split; {how}", "fallback"
    solution = fit_path(head.num_outputs, multi_label, x, y, grid, chosen)
    validation = _evaluate(solution, val, task, model, val_dataset) if val is not None else None
    refitted = bool(refit and val is not None)
    if refitted:
        raw, keep = torch.cat([train["raw"], val["raw"]]), torch.cat([train["keep"], val["keep"]])
        fusion.set_statistics(raw, keep)
        x_all = fusion.standardize(raw, keep).double().numpy()
        solution = fit_path(head.num_outputs, multi_label, x_all, np.concatenate([y, val["labels"].numpy()]), grid,
                            chosen)
    w, b = solution
    linear = head.net[-1]
    linear.weight.data.copy_(torch.from_numpy(w).to(linear.weight.dtype))
    linear.bias.data.copy_(torch.from_numpy(b).to(linear.bias.dtype))
    return {"C": chosen, "chosen_by": chosen_by, "cv": note, "select": select, "refit_on_validation": refitted,
            "sweep": sweep, "num_train": int(x.shape[0]), "grid": grid,
            "validation_before_refit": {k: v for k, v in (validation or {}).items() if isinstance(v, float)} or None}
