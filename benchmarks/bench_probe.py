"""The framework's linear probe against scikit-learn on the real dev sets, side by side in one run.

For every set (a fixed, label-stratified subset of `--per-set` rows, `benchmarks.features.subset_manifest`), the
rows are cut into 5 stratified folds (grouped by the set's group column where it has one: no speaker or
recording on both sides), the same folds for every method, each fold in turn the test split:

- ``LogisticRegression()`` and ``LogisticRegressionCV`` (defaults; grouped inner folds) on StandardScaler'd
  features of the packaged encoder (`benchmarks.features`, cached beside the dev sets);
- ``ours: cv log_loss`` / ``ours: cv accuracy`` (and ``... x3``: the cross-validation repeated over 3 shuffles):
  the probe's own C selection (`multimodal.training.probe`) on the same features, by each criterion (the
  evidence for ``train.probe_select`` and ``train.probe_cv_repeats``);
- ``multimodal.run``: the framework end to end, ``train.method=probe`` with ``data.fold_column`` over the
  same folds, features from its own cache (``data.feature_cache``), in a child process;
- ``multimodal.run auto``: the same with ``train.method=auto`` and ``train.time_budget_s=--auto-budget`` per
  fold (each fold's validation split carved from its training folds); the method it kept in each fold is printed.

Each method runs in its own child process, so its wall time and peak RSS are its own. Printed: test accuracy
mean +- sample std over the folds, and the paired difference to each scikit-learn baseline with its standard
error (ours is "within noise" of a baseline when the mean difference is above -1 standard error).

    MULTIMODAL_DEVSETS=/work/devsets PYTHONPATH=$PWD python benchmarks/bench_probe.py --json /tmp/probe.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd

from benchmarks.bench_sklearn_baseline import encoder_options
from benchmarks.common import machine_info, print_table, write_json
from benchmarks.devsets_real import build
from benchmarks.devsets_sources import SOURCES
from benchmarks.features import cache_key, extract, modality_specs, subset_manifest
from benchmarks.sklearn_probe import fit_score, folds

SKLEARN = ("LogisticRegression()", "LogisticRegressionCV")
OURS = {"ours: cv log_loss": ("log_loss", 1), "ours: cv accuracy": ("accuracy", 1),
        "ours: cv log_loss x3": ("log_loss", 3), "ours: cv accuracy x3": ("accuracy", 3)}
"""The probe's C selection: criterion and cross-validation repetitions (the defaults: accuracy, 3)."""
FRAMEWORK = "multimodal.run"
FRAMEWORK_AUTO = "multimodal.run auto"
METHODS = (*SKLEARN, *OURS, FRAMEWORK, FRAMEWORK_AUTO)
FOLD_COLUMN = "bench_fold"


def fold_manifest(name: str, per_set: int) -> str:
    """The set's subset manifest with a fold column (the folds of `benchmarks.sklearn_probe.folds`), beside it."""
    subset = subset_manifest(build(name), per_set)
    out = os.path.join(os.path.dirname(subset), f"bench_probe_folds_{per_set}.csv")
    table = pd.read_csv(subset)
    groups = table["group"].astype(str).to_numpy() if "group" in table else None
    table[FOLD_COLUMN] = -1
    for k, (_, test) in enumerate(folds(table["label"].astype(str).to_numpy(), groups)):
        table.loc[test, FOLD_COLUMN] = k
    table.to_csv(out, index=False)
    return out


def features(name: str, manifest: str, pool_stages: str | list[int] | None = None) -> dict:
    """Packaged-encoder features of the manifest's rows: from its own cache entry, else rows of the whole set's."""
    (modality, spec), = modality_specs(manifest).items()
    options = encoder_options(name, modality, pool_stages)
    kind = spec.split(":", 1)[0]
    root = os.path.dirname(os.path.dirname(os.path.abspath(manifest)))
    if not os.path.exists(os.path.join(root, "features", name, f"{kind}-{cache_key(manifest, spec, options)}.npz")):
        full_manifest = build(name)
        full_key = cache_key(full_manifest, spec, options)
        if os.path.exists(os.path.join(root, "features", name, f"{kind}-{full_key}.npz")):
            full = extract(full_manifest, spec, options)
            where = {p: i for i, p in enumerate(pd.read_csv(full_manifest)[modality])}
            rows = [where[p] for p in pd.read_csv(manifest)[modality]]
            return {k: (v[rows] if np.ndim(v) else v) for k, v in full.items()}
    return extract(manifest, spec, options)


def sklearn_folds(method: str, feats: dict, fold: np.ndarray) -> list[float]:
    """Held-out accuracy per fold of a scikit-learn pipeline (grouped inner folds for LogisticRegressionCV)."""
    groups = feats["group"] if np.any(feats["group"] != "") else None
    accs = []
    for k in range(fold.max() + 1):
        train, test = fold != k, fold == k
        acc, _, _ = fit_score(method, feats["X"][train], feats["label"][train],
                              None if groups is None else groups[train], feats["X"][test], feats["label"][test])
        accs.append(acc)
    return accs


def ours_folds(select: str, feats: dict, fold: np.ndarray, repeats: int = 1) -> list[float]:
    """Held-out accuracy per fold of the probe's C selection (`multimodal.training.probe`) by `select`, over
    `repeats` shuffles of its cross-validation (as `fit_probe` does)."""
    from sklearn.preprocessing import StandardScaler

    from multimodal.training.probe import DEFAULT_CS, choose_c, cv_sweep, fit_path, repeated_cv_folds

    classes, y = np.unique(feats["label"], return_inverse=True)
    groups = feats["group"] if np.any(feats["group"] != "") else None
    accs = []
    for k in range(fold.max() + 1):
        train, test = fold != k, fold == k
        scaler = StandardScaler().fit(feats["X"][train])
        x_train, x_test = scaler.transform(feats["X"][train]), scaler.transform(feats["X"][test])
        splits, _ = repeated_cv_folds(y[train], None if groups is None else groups[train], repeats=repeats)
        c = choose_c(cv_sweep(x_train, y[train], splits, DEFAULT_CS, len(classes)), select)
        w, b = fit_path(len(classes), False, x_train, y[train], DEFAULT_CS, c)
        accs.append(float(((x_test @ w.T + b).argmax(1) == y[test]).mean()))
    return accs


def framework_folds(name: str, manifest: str, cache: str, auto_budget: float | None = None,
                    pool_stages: str | list[int] | None = None) -> tuple[list, list]:
    """Test accuracy per fold of ``multimodal.run`` over the manifest's fold column, and the method each fold ran:
    ``train.method=probe``, or ``auto`` within `auto_budget` seconds per fold when that is given."""
    from multimodal import run
    from multimodal.config import load_config

    (modality, spec), = modality_specs(manifest).items()
    table = pd.read_csv(manifest, nrows=1)
    options = encoder_options(name, modality, pool_stages)
    if pool_stages is None:  # the framework's own choice: every stage for the frozen methods, none for trained ones
        options.pop("pool_stages", None)
    kwargs = json.dumps({modality: options})
    with tempfile.TemporaryDirectory() as out:
        overrides = [f"data.train={manifest}", f"data.fold_column={FOLD_COLUMN}", "data.split_column=null",
                     *[f"data.{m}_column={m if m == modality else 'null'}" for m in ("text", "image", "audio")],
                     f"data.group_column={'group' if 'group' in table else 'null'}", f"data.feature_cache={cache}",
                     f"model.encoders={{{modality}: '{spec}'}}", f"model.encoder_kwargs={kwargs}",
                     *(["train.method=probe"] if auto_budget is None else
                       ["train.method=auto", f"train.time_budget_s={auto_budget}"]),
                     f"train.output_dir={out}/run",
                     "train.log_with=none", "train.progress_bar=false", "eval.html_report=false",
                     "data.num_workers=0"]
        metrics = run(load_config(None, overrides))
        folds = metrics["cross_validation"]["folds"]
        chosen = [_selection(os.path.join(out, "run", "folds", f["fold"], "metrics.json")) for f in folds]
    return [f["test"]["accuracy"] for f in folds], chosen


def _selection(path: str) -> dict:
    """What a fold's method-auto run kept and each candidate's status, validation score and seconds (from its
    metrics.json; a probe run: the probe alone)."""
    with open(path, encoding="utf-8") as f:
        selection = json.load(f).get("method_selection")
    if not selection:
        return {"chosen": "probe"}
    return {"chosen": selection["chosen"], "candidates": selection["candidates"]}


def worker(method: str, name: str, per_set: int, cache: str, auto_budget: float,
           pool_stages: str | list[int] | None = None) -> dict:
    """One method on one set (in this process): per-fold accuracies, seconds, peak RSS."""
    start = time.perf_counter()
    manifest = fold_manifest(name, per_set)
    chosen: list[str] = []
    selections: list[dict] = []
    if method in (FRAMEWORK, FRAMEWORK_AUTO):
        accs, selections = framework_folds(name, manifest, cache, auto_budget if method == FRAMEWORK_AUTO else None,
                                           pool_stages)
        chosen = [s["chosen"] for s in selections]
    else:
        feats = features(name, manifest, pool_stages)
        fold = pd.read_csv(manifest)[FOLD_COLUMN].to_numpy()
        accs = (sklearn_folds(method, feats, fold) if method in SKLEARN
                else ours_folds(OURS[method][0], feats, fold, OURS[method][1]))
    return {"set": name, "method": method, "folds": accs, "chosen": chosen, "selections": selections,
            "seconds": time.perf_counter() - start,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def in_child(method: str, name: str, per_set: int, cache: str, auto_budget: float,
             pool_stages: str | list[int] | None = None) -> dict:
    """`worker` in a child process (its own wall time and peak RSS)."""
    cmd = [sys.executable, "-m", "benchmarks.bench_probe", "--worker", method, "--sets", name,
           "--per-set", str(per_set), "--cache", cache, "--auto-budget", str(auto_budget),
           *([] if pool_stages is None else ["--pool-stages", json.dumps(pool_stages)])]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    if done.returncode:
        raise RuntimeError(f"{method} on {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def paired(ours: list[float], base: list[float]) -> str:
    """Mean paired difference in points +- its standard error."""
    diff = 100 * (np.asarray(ours) - np.asarray(base))
    return f"{diff.mean():+.1f} +- {diff.std(ddof=1) / np.sqrt(len(diff)):.1f}"


def is_sklearn(method: str) -> bool:
    """True for a scikit-learn baseline row (also one `combined` renamed after its features)."""
    return method.split(" pool_stages=")[0] in SKLEARN


def combined(paths: list[str]) -> list[dict]:
    """The results of several `--json` runs on the same folds; the scikit-learn rows of every run after the first
    are named after their features (`LogisticRegression() pool_stages=[]`), so each is a baseline of its own."""
    results = []
    for i, path in enumerate(paths):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        for r in data["results"]:
            renamed = i and r["method"] in SKLEARN
            results.append({**r, "method": f"{r['method']} pool_stages={json.dumps(data.get('pool_stages'))}"}
                           if renamed else r)
    return results


def rows_for(results: list[dict]) -> list[dict]:
    """Table rows: accuracy mean +- std per method and the paired differences to the scikit-learn baselines."""
    base = {r["method"]: r["folds"] for r in results if is_sklearn(r["method"])}
    rows = []
    for r in results:
        accs = 100 * np.asarray(r["folds"])
        row = {"set": r["set"], "method": r["method"], "test acc %": f"{accs.mean():.1f} +- {accs.std(ddof=1):.1f}",
               "seconds": round(r["seconds"], 1), "peak RSS MB": round(r["peak_rss_mb"]),
               "kept per fold": " ".join(r.get("chosen") or [])}
        for b, accs_b in base.items():
            row[f"vs {b}"] = paired(r["folds"], accs_b) if not is_sklearn(r["method"]) else ""
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="*", default=list(SOURCES))
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--per-set", type=int, default=500, help="rows of each set's fixed stratified subset")
    parser.add_argument("--cache", default=None, help="the framework's feature cache (default: a folder in the "
                                                      "dev sets' cache root)")
    parser.add_argument("--auto-budget", type=float, default=120.0,
                        help="train.time_budget_s of each fold's method-auto run (seconds)")
    parser.add_argument("--pool-stages", type=json.loads, default=None,
                        help='the encoder\'s pool_stages as JSON: [] (none), "all" or a list of stages (default: the '
                             "encoder's default for the features, the framework's per-method default for its runs)")
    parser.add_argument("--combine", nargs="*", default=None,
                        help="print one table from these --json files (same sets and folds; the scikit-learn rows "
                             "of the later files are baselines of their own) instead of running")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    cache = args.cache or os.path.join(os.path.dirname(os.path.dirname(build(args.sets[0]))), "framework_cache")
    if args.worker:
        print(json.dumps(worker(args.worker, args.sets[0], args.per_set, cache, args.auto_budget, args.pool_stages)))
        return
    results = combined(args.combine) if args.combine else []
    for name in [] if args.combine else args.sets:
        for method in args.methods:
            results.append(in_child(method, name, args.per_set, cache, args.auto_budget, args.pool_stages))
            print(json.dumps(results[-1]), flush=True)
    sets = list(dict.fromkeys(r["set"] for r in results))
    rows = [row for name in sets for row in rows_for([r for r in results if r["set"] == name])]
    print_table(f"linear probe vs scikit-learn, {args.per_set}-row subsets, 5 folds (test accuracy %)", rows,
                ["set", "method", "test acc %", *dict.fromkeys(k for row in rows for k in row if k.startswith("vs ")),
                 "seconds", "peak RSS MB", "kept per fold"])
    write_json(args.json, {"machine": machine_info(), "per_set": args.per_set, "pool_stages": args.pool_stages,
                           "results": results, "table": rows})


if __name__ == "__main__":
    main()
