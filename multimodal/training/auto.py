"""``train.method: auto``: fit the probe, then the trained methods that the data and the time budget allow; keep
the best on validation.

Candidates, cheapest first (`multimodal.config.method.METHODS`): the linear probe, the frozen-encoder head,
LoRA, the last blocks, full fine-tuning. Each is an ordinary run of the runner's `train_and_evaluate` with the
method's config (`candidate_config`) into ``<output_dir>/candidates/<method>/``, sharing ``train.time_budget_s``
(600 s when null): a trained candidate gets what is left as its own budget (so its Trainer stops between
epochs), and starts only when

* the training split has at least `MIN_TRAIN_ROWS` rows for it (trained encoders overfit small data: the
  issue-18 measurements found fine-tuning below the probe there), and
* its estimated cost fits what is left: epochs x (batches per epoch x the measured seconds of one training
  step of the full model, `step_seconds`), an over-estimate for LoRA and last blocks.

The winner has the best validation score of the task's selection metric, by the one-standard-error rule: a
dearer method replaces the kept one only when its score is higher by more than one standard error of the kept
score (binomial, ``sqrt(p(1-p)/n)`` over the n validation rows, for metrics bounded by 1 such as accuracy and
macro-F1; 0 for others and at a saturated 1.0). The issue-18 dev sets showed why: on ~40 validation rows the
frozen head "beat" the probe by 5-6 points of macro-F1 in folds where it then lost up to 9 points of test
accuracy (BENCHMARKS.md, section 10c). Exact ties go to the lower validation loss, then to the cheaper method;
auto is never below the probe on validation. The probe competes fitted on the training rows only (its
validation score held out); when it wins it is refitted as ``train.refit_full`` says.
Under several processes (DDP) every process takes the main process's budget decisions (what is left, each
candidate's estimate and whether it runs: `agreed`), so clocks that differ by a little never make one process
train a candidate the others skip. Without a validation split nothing can be compared: the probe alone runs. Every candidate's score, time and
status go to ``metrics.json`` (``method_selection``) and the report. Candidates write no checkpoints (a
selection cannot be resumed); the losers' weights are deleted once the winner is in ``<output_dir>/model``.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from accelerate.utils import broadcast_object_list

from multimodal.config.method import METHODS, apply_method, switches_chosen
from multimodal.evaluation.metrics import improves, metric_bound
from multimodal.training.accelerator import process_state
from multimodal.training.methods import prepare_model
from multimodal.training.predict import forward_batch

DEFAULT_BUDGET_S = 600.0
MIN_TRAIN_ROWS = {"probe": 0, "head": 20, "last_blocks": 200, "lora": 200, "full": 500}
ENCODER_METHODS = ("last_blocks", "lora", "full")


@dataclass
class Candidate:
    """One method's run inside the selection: its status, validation score and loss, seconds, and outputs."""

    method: str
    status: str = "not run"
    score: Optional[float] = None
    loss: Optional[float] = None
    seconds: float = 0.0
    estimate_s: Optional[float] = None
    result: dict[str, Any] = field(default_factory=dict)
    evaluations: dict[str, Any] = field(default_factory=dict)

    def row(self, metric: str) -> dict[str, Any]:
        """The candidate's line of the method-selection table."""
        test = self.result.get("test") or {}
        return {"method": self.method, "status": self.status, f"validation {metric}": self.score,
                "validation loss": self.loss, f"test {metric}": test.get(metric), "seconds": round(self.seconds, 2),
                "estimate_s": None if self.estimate_s is None else round(self.estimate_s, 1),
                "epochs_run": self.result.get("epochs_run")}


def auto_applies(cfg: Any) -> bool:
    """Whether the run selects its method: ``train.method: auto`` and no switch of the config chose one."""
    return cfg.train.method == "auto" and not switches_chosen(cfg)


def candidate_config(cfg: Any, method: str, budget_s: Optional[float]) -> Any:
    """`cfg` set up for `method` (its switches), with `budget_s` as the run's time budget; the probe unrefitted."""
    out = copy.deepcopy(cfg)
    out.train.method = method
    apply_method(out)
    out.train.time_budget_s = budget_s
    if method == "probe":
        out.train.refit_full = False  # its validation score must be held out to compare
    return out


def step_seconds(task: Any, splits: Any, cfg: Any, loaders_fn: Callable[..., dict]) -> tuple[float, int]:
    """Seconds of one training step (forward and backward of one batch) of the fully trainable model, and the
    batches of an epoch: what a trained-encoder candidate's epoch costs, measured before it starts."""
    model = prepare_model(task.build_model(splits), cfg, task.label_type)
    loaders = loaders_fn(task, model, splits, progress=False)
    batch = next(iter(loaders["train"]))
    model.train()
    start = time.perf_counter()
    forward_batch(model, batch).loss.backward()
    return time.perf_counter() - start, len(loaders["train"])


def agreed(value: Any) -> Any:
    """`value` as the main process has it, on every process (one broadcast when there are several)."""
    state = process_state()
    if state.num_processes == 1:
        return value
    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def _why_not(method: str, rows: int, left: float, estimate: Optional[float]) -> Optional[str]:
    """Why `method` is skipped (None: it runs)."""
    if rows < MIN_TRAIN_ROWS[method]:
        return f"skipped: {rows} training rows (< {MIN_TRAIN_ROWS[method]})"
    if left <= 0:
        return "skipped: no budget left"
    if estimate is not None and estimate > left:
        return f"skipped: estimated {estimate:.0f}s > {left:.0f}s left of the budget"
    return None


def noise_margin(score: Optional[float], metric: str, rows: int) -> float:
    """One standard error of a validation `score` of `metric` on `rows` rows (binomial) when the metric is bounded
    by 1 (accuracy, F1, AUROC), else 0: what a dearer method must beat the kept one by."""
    if score is None or rows <= 0 or metric_bound(metric) != 1.0:
        return 0.0
    p = min(max(float(score), 0.0), 1.0)
    return math.sqrt(p * (1.0 - p) / rows)


def _better(c: Candidate, best: Optional[Candidate], mode: str, margin: float) -> bool:
    """Whether `c` (dearer) beats `best`: by more than `margin`; an exact tie by the lower validation loss (else
    the earlier, cheaper method stays)."""
    if best is None:
        return True
    if margin > 0 and c.score is not None and best.score is not None and c.score != best.score:
        return c.score > best.score + margin if mode == "max" else c.score < best.score - margin
    return improves(c.score, best.score, mode, loss=c.loss, best_loss=best.loss)


def select_method(task: Any, splits: Any, output_dir: str, train_fn: Callable[..., tuple],
                  loaders_fn: Callable[..., dict], log: Callable[[str], None] = print) -> tuple[dict, dict]:
    """Run the candidates (see the module docstring) and put the winner's model in ``output_dir/model``; returns
    the winner's result (with ``method_selection``) and evaluations, as `train_fn` does."""
    cfg = task.cfg
    budget = cfg.train.time_budget_s or DEFAULT_BUDGET_S
    start, rows = time.time(), len(splits.train)
    has_probe = task.label_type in ("single_label", "multi_label") and task.uses_fusion
    methods = [m for m in METHODS if has_probe or m != "probe"]
    if splits.validation is None:
        methods = methods[:1]
        log("method auto: no validation split to compare methods on; only the cheapest runs")
    candidates = [Candidate(m) for m in methods]
    val_rows = splits.validation is not None and len(splits.validation) > 0
    best: Optional[Candidate] = None
    step: Optional[tuple[float, int]] = None
    for c in candidates:
        left = agreed(budget - (time.time() - start))
        if c.method in ENCODER_METHODS and step is None and rows >= MIN_TRAIN_ROWS[c.method] and left > 0:
            step = step_seconds(type(task)(candidate_config(cfg, "full", None)), splits,
                                candidate_config(cfg, "full", None), loaders_fn)
        if c.method in ENCODER_METHODS and step is not None:
            c.estimate_s = step[0] * step[1] * cfg.train.epochs
        c.estimate_s, why = agreed((c.estimate_s, _why_not(c.method, rows, left, c.estimate_s)))
        if why is not None:
            c.status = why
            log(f"method auto: {c.method} {c.status}")
            continue
        _run(c, task, splits, output_dir, train_fn, None if c.method == "probe" else left, log)
        metric = c.result.get("metric_for_best", "")
        margin = noise_margin(best.score, metric, len(splits.validation)) if best is not None and val_rows else 0.0
        if c.status == "ran" and _better(c, best, task.metric_mode(metric), margin):
            best = c
    if best is None:
        raise RuntimeError("method auto: no candidate finished")  # the probe (or the head) always runs
    return _finish(best, candidates, task, splits, output_dir, train_fn, log, time.time() - start, budget)


def _run(c: Candidate, task: Any, splits: Any, output_dir: str, train_fn: Callable[..., tuple],
         budget: Optional[float], log: Callable[[str], None]) -> None:
    """One candidate through `train_fn` into ``output_dir/candidates/<method>``; fills its score and time."""
    ccfg = candidate_config(task.cfg, c.method, budget)
    t0 = time.time()
    c.result, c.evaluations = train_fn(type(task)(ccfg), splits, os.path.join(output_dir, "candidates", c.method),
                                       main=False)
    c.seconds, c.status = time.time() - t0, "ran"
    metric = c.result["metric_for_best"]
    val = c.result.get("validation") or {}
    c.score, c.loss = val.get(metric), val.get("loss")
    log(f"method auto: {c.method}: validation {metric}={c.score} loss={c.loss} in {c.seconds:.1f}s")


def _finish(best: Candidate, candidates: list[Candidate], task: Any, splits: Any, output_dir: str,
            train_fn: Callable[..., tuple], log: Callable[[str], None], seconds: float,
            budget: float) -> tuple[dict, dict]:
    """The winner (the probe refitted as train.refit_full says) as the run's model, and the selection record."""
    cfg = task.cfg
    metric = best.result["metric_for_best"]
    result, evaluations = best.result, best.evaluations
    refitted = best.method == "probe" and cfg.train.refit_full is not False and splits.validation is not None
    if refitted:
        refit = candidate_config(cfg, "probe", None)
        refit.train.refit_full = True
        result, evaluations = train_fn(type(task)(refit), splits, os.path.join(output_dir, "candidates", "probe-refit"),
                                       main=False)
    _keep_winner(output_dir, "probe-refit" if refitted else best.method)
    log(f"method auto: kept {best.method} (validation {metric}={best.score})")
    result = dict(result)
    result["method_selection"] = {"chosen": best.method, "metric": metric, "budget_s": budget,
                                  "seconds": round(seconds, 2), "refit": refitted,
                                  "candidates": [c.row(metric) for c in candidates]}
    return result, evaluations


def _keep_winner(output_dir: str, name: str) -> None:
    """Copy candidate `name`'s model folder to ``output_dir/model`` and delete every candidate's weights (main
    process; the others wait)."""
    state = process_state()
    if state.is_main_process:
        root = os.path.join(output_dir, "candidates")
        shutil.copytree(os.path.join(root, name, "model"), os.path.join(output_dir, "model"), dirs_exist_ok=True)
        for folder in os.listdir(root):
            shutil.rmtree(os.path.join(root, folder, "model"), ignore_errors=True)
    state.wait_for_everyone()
