"""The sections a training run's report opens with, built from the run's record (what ``metrics.json`` holds)
and its resolved config: the headline table (fused model, each single modality, chance; validation and test),
the kept epoch, the data (rows per split and class, skipped rows), the method with its trainable parameters,
and the config. `multimodal.evaluation.report` renders them as Markdown and HTML."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from multimodal.evaluation.glossary import metric_label
from multimodal.evaluation.metrics import saturation_warning

# chance key -> (row of the headline table, the metric it is comparable with)
CHANCE_ROWS = {
    "majority_accuracy": ("chance: always the majority training class", "accuracy"),
    "majority_macro_f1": ("chance: always the majority training class", "macro_f1"),
    "uniform_accuracy": ("chance: uniform random guess", "accuracy"),
    "prior_micro_f1": ("chance: the training label prior", "micro_f1"),
    "prior_macro_f1": ("chance: the training label prior", "macro_f1"),
    "mean_mse": ("chance: always the training mean", "mse"),
    "mean_mae": ("chance: always the training mean", "mae"),
}
SECOND_METRIC = {"single_label": "accuracy", "multi_label": "macro_f1", "regression": "mae"}
MAX_CLASS_COLUMNS = 12


@dataclass
class Section:
    """One titled block of a report: paragraphs, an optional table, an optional preformatted block."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    code: Optional[str] = None
    collapsed: bool = False  # HTML: folded into a <details> element


def fmt(value: Any) -> str:
    """A table cell: floats to 4 decimals, a missing value as an en dash."""
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def headline_metrics(run: dict[str, Any]) -> list[str]:
    """The metrics the headline table shows: the model-selection metric, then one more for the task."""
    metric = run.get("metric_for_best") or "loss"
    keys = [metric]
    second = SECOND_METRIC.get(run.get("task", ""))
    scored = {**(run.get("validation") or {}), **(run.get("test") or {})}
    if second and second != metric and second in scored:
        keys.append(second)
    if run.get("task") == "retrieval":
        keys += sorted(k for k in scored if k.endswith("/R@1") and not k.startswith("chance/") and k not in keys)
    return keys


def headline_section(run: dict[str, Any]) -> Section:
    """Fused model, each single-modality baseline and chance, on validation and test, for the headline metrics."""
    keys = headline_metrics(run)
    splits = [s for s in ("validation", "test") if s in run]
    header = ["model"] + [f"{s} {metric_label(k)}" for k in keys for s in splits]
    modalities = run.get("modalities", [])
    name = f"{'fused' if len(modalities) > 1 else 'model'} ({' + '.join(modalities)})"
    rows = [[name] + [fmt(run[s].get(k)) for k in keys for s in splits]]
    for modality, result in sorted((run.get("baselines") or {}).items()):
        rows.append([f"{modality} only"] + [fmt((result.get(s) or {}).get(k)) for k in keys for s in splits])
    chance = _chance_rows(run, keys, splits)
    for label, values in chance.items():
        rows.append([label] + [fmt(values.get((s, k))) for k in keys for s in splits])
    higher = [metric_label(k) for k in keys if not _lower_better(k)]
    lower = [metric_label(k) for k in keys if _lower_better(k)]
    para = [f"{' and '.join(higher)}: higher is better." if higher else "",
            f"{' and '.join(lower)}: lower is better." if lower else ""]
    if chance:
        para.append("Chance levels use the training labels alone.")
    if not run.get("baselines") and len(run.get("modalities", [])) > 1:
        para.append("No single-modality rows: set eval.baselines=true to train them.")
    return Section("Headline", [" ".join(p for p in para if p)], header, rows)


def _chance_rows(run: dict[str, Any], keys: list[str], splits: list[str]) -> dict[str, dict[tuple[str, str], float]]:
    """Chance row label -> {(split, metric): value}: from ``chance_by_split`` when the run recorded it, else
    from ``chance`` (the test split, or validation without one); retrieval reads its metrics' own chance R@1."""
    by_split = dict(run.get("chance_by_split") or {})
    if not by_split and run.get("chance"):
        by_split["test" if "test" in run else "validation"] = run["chance"]
    rows: dict[str, dict[tuple[str, str], float]] = {}
    for split, values in by_split.items():
        for key, value in (values or {}).items():
            if key in CHANCE_ROWS:
                label, metric = CHANCE_ROWS[key]
                rows.setdefault(label, {})[(split, metric)] = value
    if run.get("task") == "retrieval":  # the retrieval metrics carry their own chance R@1
        rows["chance: random ranking"] = {(s, k): (run.get(s) or {})[f"chance/{k}"] for s in splits for k in keys
                                          if f"chance/{k}" in (run.get(s) or {})}
    return {label: values for label, values in rows.items() if values}


def _lower_better(key: str) -> bool:
    return key in ("loss", "mse", "mae") or key.endswith(("median_rank", "mean_rank"))


def kept_section(run: dict[str, Any]) -> Section:
    """Which epoch's weights were kept and why, with a warning when the selection metric saturated."""
    metric, best = run.get("metric_for_best"), run.get("best_epoch")
    paras = []
    if run.get("probe"):
        probe = run["probe"]
        how = probe.get("chosen_by") or f"validation {metric_label(metric or '')}"
        paras.append(f"Linear probe: C={probe.get('C')} chosen by {how} among {len(probe.get('sweep', []))} values"
                     + (f" ({probe['cv']})" if probe.get("cv") else "")
                     + (", then refitted on train + validation" if probe.get("refit_on_validation") else "") + ".")
    elif best is not None:
        record = next((h for h in run.get("history", []) if h.get("epoch") == best), {})
        scores = ", ".join(f"{metric_label(k)} {fmt(record.get(k))}" for k in dict.fromkeys([metric, "loss"])
                           if k and k in record)
        stop = (f"; training stopped early after epoch {run.get('epochs_run')}" if run.get("stopped_early")
                else f" of {run.get('epochs_run')} trained")
        paras.append(f"Epoch {best}{stop}. It was kept for the best validation {metric_label(metric or 'loss')}"
                     f" (ties go to the lower validation loss)" + (f": {scores}." if scores else "."))
        warning = saturation_warning(record, metric, run.get("metric_mode")) if metric else None
        if warning:
            paras.append(f"Warning: {warning}.")
    else:
        paras.append("No validation split: the last epoch's model was kept.")
    return Section("Kept model", paras)


def _class_counts(run: dict[str, Any]) -> dict[str, list[int]]:
    """Rows per class per split: the run's own counts when recorded, else the evaluated splits' confusion rows."""
    counts = {s: list(v) for s, v in (run.get("class_counts") or {}).items()}
    for split in ("validation", "test"):
        matrix = (run.get(split) or {}).get("confusion_matrix")
        if split not in counts and matrix:
            counts[split] = [int(sum(row)) for row in matrix]
    return counts


def skip_note(skip: Optional[dict[str, Any]], rows: Optional[int] = None) -> str:
    """'2 of 30 rows skipped (2 label)' for one split's skip record (``DataSplits.skip_report()``), '' when none."""
    total = (skip or {}).get("total", 0)
    if not total:
        return ""
    reasons = ", ".join(f"{n} {r}" for r, n in sorted((skip.get("by_reason") or {}).items()))
    of = f" of {rows + total}" if rows is not None else ""
    return f"{total}{of} {'row' if total == 1 and not of else 'rows'} skipped" + (f" ({reasons})" if reasons else "")


def data_section(run: dict[str, Any]) -> Section:
    """Rows per split (and per class, for up to `MAX_CLASS_COLUMNS` classes) and the rows skipped, with why."""
    sizes, skipped = run.get("split_sizes") or {}, run.get("skipped") or {}
    labels = run.get("labels") or []
    counts = _class_counts(run) if labels and len(labels) <= MAX_CLASS_COLUMNS else {}
    header = ["split", "rows"] + ([f"class {c}" for c in labels] if counts else []) + ["skipped"]
    rows = []
    for split, size in sizes.items():
        per_class = [fmt(n) for n in counts.get(split, [])] or ["–"] * len(labels) if counts else []
        rows.append([split, str(size), *per_class, skip_note(skipped.get(split)) or "0"])
    paras = [f"Labels: {', '.join(labels)}." if labels else ""]
    paras += [f"{note[0].upper()}{note[1:].rstrip('.')}." for note in run.get("split_notes") or [] if note]
    examples = [e for s in skipped.values() for e in (s.get("examples") or [])][:3]
    if examples:
        paras.append("First skipped rows: " + "; ".join(examples))
    return Section("Data", [p for p in paras if p], header, rows)


def describe_method(config: dict[str, Any], run: dict[str, Any]) -> str:
    """The training method in words, from the resolved config (probe, LoRA, frozen or fine-tuned encoders)."""
    model, train = config.get("model") or {}, config.get("train") or {}
    encoders = ", ".join(f"{m}: {spec}" for m, spec in (model.get("encoders") or run.get("encoders") or {}).items())
    frozen = run.get("frozen") or []
    chosen = (run.get("method_selection") or {}).get("chosen")
    if chosen:
        model, train = _chosen_switches(model, train, chosen)
    if train.get("linear_probe"):
        how = "a linear probe (logistic regression on frozen encoder features)"
    elif model.get("peft"):
        peft = model["peft"]
        how = f"LoRA adapters (rank {peft.get('r', '?')}) on the encoders, fusion and head trained"
    elif model.get("unlock_last_blocks"):
        how = f"the last blocks of {model['unlock_last_blocks']} unlocked, fusion and head trained"
    elif frozen and len(frozen) == len(run.get("modalities", frozen)):
        how = "frozen encoders, only the fusion and head trained"
    elif frozen:
        how = f"{', '.join(frozen)} frozen, the other encoders fine-tuned with the fusion and head"
    else:
        how = "full fine-tuning of encoders, fusion and head"
    extras = [name for key, name in (("probe_init", "LP-FT (probe first)"), ("wise_ft_alphas", "WiSE-FT"),
                                     ("ema_decay", "weight EMA"), ("distill", "distillation"),
                                     ("adversarial", "adversarial training")) if train.get(key)]
    fusion = f", {model.get('fusion', run.get('fusion'))} fusion" if run.get("fusion") else ""
    return f"{how}{fusion}" + (f", with {', '.join(extras)}" if extras else "") + f" ({encoders})"


def _chosen_switches(model: dict[str, Any], train: dict[str, Any], chosen: str) -> tuple[dict, dict]:
    """The config's model and train sections as method auto's winner `chosen` ran them (for its description)."""
    model = dict(model)
    model["peft"] = (model.get("peft") or {"r": 8}) if chosen == "lora" else None
    model["unlock_last_blocks"] = (model.get("unlock_last_blocks") or {"each encoder": 2}) if chosen == "last_blocks" else {}
    return model, {**train, "linear_probe": chosen == "probe"}


def selection_section(run: dict[str, Any]) -> Optional[Section]:
    """Method auto's candidates: status, validation and test scores, seconds (None for other runs)."""
    sel = run.get("method_selection")
    if not sel:
        return None
    rows = [[fmt(v) for v in c.values()] for c in sel["candidates"]]
    header = list(sel["candidates"][0]) if sel["candidates"] else []
    para = (f"train.method auto kept {sel['chosen']}: the best validation {metric_label(sel['metric'])}, a dearer "
            "method needing more than one standard error over a cheaper one (exact ties: the lower validation loss, "
            f"then the cheaper method), in {sel['seconds']:.1f} s of a {sel['budget_s']:g} s "
            "budget" + ("; the probe was then refitted on train + validation." if sel.get("refit") else "."))
    return Section("Method selection", [para], header, rows)


def method_section(run: dict[str, Any], config: Optional[dict[str, Any]]) -> Section:
    """The method in words and the parameter counts (trainable of total, and in the encoders)."""
    paras = [describe_method(config or {}, run).capitalize() + "."]
    counts = run.get("parameters") or {}
    if counts:
        share = counts["trainable"] / counts["total"] if counts.get("total") else 0.0
        paras.append(f"Trainable parameters: {counts['trainable']:,} of {counts['total']:,} ({share:.2%}); in the "
                     f"encoders {counts.get('encoders_trainable', 0):,} of {counts.get('encoders_total', 0):,}.")
    train = (config or {}).get("train") or {}
    if train:
        paras.append(f"{train.get('epochs')} epochs at most, batch size {train.get('batch_size')}, head LR "
                     f"{train.get('head_lr')}, encoder LR {train.get('encoder_lr')}, mixed precision "
                     f"{train.get('mixed_precision')}, seed {train.get('seed')}.")
    if run.get("train_time_s") is not None:
        whole = run.get("wall_time_s")
        paras.append(f"Training took {run['train_time_s']:.1f} s" + (f"; the whole run {whole:.1f} s." if whole else "."))
    return Section("Method", paras)


def config_section(config: dict[str, Any]) -> Section:
    """The resolved config as YAML (runnable again with ``multimodal-train --config``)."""
    return Section("Config", ["The resolved config of this run (also in config.yaml)."],
                   code=yaml.safe_dump(config, sort_keys=False), collapsed=True)


def run_sections(run: dict[str, Any], config: Optional[dict[str, Any]] = None) -> list[Section]:
    """Every run-level section, in reading order (the config last)."""
    sections = [headline_section(run), kept_section(run), data_section(run), method_section(run, config)]
    selection = selection_section(run)
    if selection is not None:
        sections.append(selection)
    return sections + ([config_section(config)] if config else [])
