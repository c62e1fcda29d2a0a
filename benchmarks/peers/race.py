"""Race the framework against its peers on the same split, encoders and time budget, one job after another.

    PYTHONPATH=. .venv/bin/python benchmarks/peers/race.py --data /work/devsets/<set>/manifest.csv \
        --jobs classify,retrieve,text --budget-s 900 --out /work/peer-runs/race-1

Jobs (see benchmarks/peers/README.md):
  classify  fused text+image classification: ours (recipe text_image_classification) vs AutoGluon MultiModalPredictor
  image     the image tower alone (for a real photo set without text): ours image-only vs AutoGluon image-only
  retrieve  text-image two-tower retrieval: ours (recipe image_text_retrieval) vs sentence-transformers
  text      the text tower alone: ours text-only vs a plain transformers.Trainer (sequence classification)

Each contender runs as its own process (ours through the recipe's command line, each peer with its venv's
python), with a wall-clock limit of ``--kill-factor`` x the budget. This script samples the peak RSS of the
process tree, timestamps its output (ours: time to the best validation epoch), scores every peer's test
predictions or embeddings with one scorer (peer_common), and prints a table with ours/peer ratios. Results,
logs and models go under --out (outside the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import psutil
from peer_common import read_split, retrieval_index, retrieval_metrics
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import GroupShuffleSplit

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
VENVS = os.environ.get("PEER_VENVS", "/work/peer-venvs")
WEIGHTS = os.path.join(VENVS, "weights")
TEXT_ONLY_CONFIG = os.path.join(HERE, "ours_text_only.yaml")
IMAGE_ONLY_CONFIG = os.path.join(HERE, "ours_image_only.yaml")
LORA_CONFIG = os.path.join(REPO, "recipes", "configs", "text_image_classification_finetune.yaml")


@dataclass
class Contender:
    """One process to run: a job, a name, its command and how to score what it leaves in ``out``."""

    job: str
    key: str  # short id for --only / --skip
    name: str
    argv: list[str]
    out: str
    ours: bool
    measured: dict = field(default_factory=dict)


def prepare_splits(manifest: str, out: str, seed: int, max_rows: int | None = None) -> dict[str, str]:
    """Write train/validation/test CSVs with absolute image paths; a manifest without ``split`` is split by group.

    ``max_rows`` keeps a seeded random sample of at most that many rows per split (the same for every contender).
    """
    df = pd.read_csv(manifest, keep_default_na=False)
    base = os.path.dirname(os.path.abspath(manifest))
    if "image" in df.columns:
        df["image"] = [p if not p or os.path.isabs(p) else os.path.normpath(os.path.join(base, p)) for p in df["image"]]
    if "split" not in df.columns:
        groups = df["group"] if "group" in df.columns else df.get("image", pd.Series(range(len(df))))
        rest, test = next(GroupShuffleSplit(1, test_size=0.2, random_state=seed).split(df, groups=groups))
        df["split"] = "train"
        df.loc[df.index[test], "split"] = "test"
        sub = df.iloc[rest]
        _, val = next(GroupShuffleSplit(1, test_size=0.125, random_state=seed).split(sub, groups=groups.iloc[rest]))
        df.loc[sub.index[val], "split"] = "validation"
    df["split"] = df["split"].replace({"val": "validation", "valid": "validation", "dev": "validation"})
    os.makedirs(out, exist_ok=True)
    paths = {}
    for split in ("train", "validation", "test"):
        part = df[df["split"] == split].drop(columns=["split"])
        if max_rows and len(part) > max_rows:
            part = part.sample(n=max_rows, random_state=seed).sort_index()
        if part.empty:
            raise SystemExit(f"{manifest}: the {split!r} split is empty")
        paths[split] = os.path.join(out, f"{split}.csv")
        part.to_csv(paths[split], index=False)
    return paths


def ours(job: str, key: str, name: str, root: str, splits: dict[str, str], overrides: list[str],
         config: str | None = None) -> Contender:
    """The framework through its recipe command line (the recipe's shipped config unless ``config``), on the split's
    manifests, with a cold feature cache."""
    recipe = "image_text_retrieval" if job == "retrieve" else "text_image_classification"
    shipped = os.path.join(REPO, "recipes", "configs", f"{recipe}.yaml")
    config = config or {"text": TEXT_ONLY_CONFIG, "image": IMAGE_ONLY_CONFIG}.get(job, shipped)
    out = os.path.join(root, key)
    argv = [sys.executable, os.path.join(REPO, "recipes", f"{recipe}.py"), "--config", config,
            "data.demo=null", f"data.train={splits['train']}", f"data.validation={splits['validation']}",
            f"data.test={splits['test']}", f"train.output_dir={out}", f"data.feature_cache={out}/feature-cache"]
    if job == "classify":
        argv.append("eval.baselines=false")  # the peers train no unimodal baselines
    return Contender(job, key, name, argv + overrides, out, ours=True)


def peer(job: str, key: str, name: str, venv: str, script: str, root: str, splits: dict[str, str], budget: float,
         extra: list[str]) -> Contender:
    """A peer runner with its own venv's python."""
    out = os.path.join(root, key)
    argv = [os.path.join(VENVS, venv, "bin", "python"), os.path.join(HERE, script),
            "--train", splits["train"], "--validation", splits["validation"], "--test", splits["test"],
            "--out", out, "--budget-s", str(budget), "--text-model", os.path.join(WEIGHTS, "minilm"),
            "--image-model", os.path.join(WEIGHTS, "tf_efficientnet_lite0")]
    return Contender(job, key, name, argv + extra, out, ours=False)


def contenders(jobs: list[str], splits: dict[str, str], root: str, budget: float) -> list[Contender]:
    """Every contender of the chosen jobs: ours (shipped default) first in each job, then the peers, then our
    other methods."""
    r, s, b = root, splits, budget
    plan = {
        "classify": [
            ours("classify", "classify-ours", "ours: shipped default (frozen towers, MLP head)", r, s, []),
            peer("classify", "classify-ag", "AutoGluon MultiModalPredictor", "ag", "run_autogluon.py", r, s, b, []),
            ours("classify", "classify-ours-probe", "ours: linear probe", r, s, ["train.linear_probe=true"]),
            ours("classify", "classify-ours-lora", "ours: shipped LoRA preset (_finetune.yaml)", r, s, [],
                 LORA_CONFIG),
        ],
        "retrieve": [
            ours("retrieve", "retrieve-ours", "ours: shipped default (frozen towers)", r, s, []),
            ours("retrieve", "retrieve-ours-lit", "ours: LiT (text tower tuned)", r, s, ["model.freeze_encoders=[image]"]),
            peer("retrieve", "retrieve-st", "sentence-transformers (frozen towers)", "st",
                 "run_sentence_transformers.py", r, s, b, ["--epochs", "30"]),
            peer("retrieve", "retrieve-st-lit", "sentence-transformers LiT (text tower tuned)", "st",
                 "run_sentence_transformers.py", r, s, b, ["--epochs", "30", "--tune", "text"]),
        ],
        "image": [
            ours("image", "image-ours", "ours image-only: shipped default (frozen, MLP head)", r, s, []),
            ours("image", "image-ours-probe", "ours image-only: linear probe", r, s, ["train.linear_probe=true"]),
            peer("image", "image-ag", "AutoGluon MultiModalPredictor (image only)", "ag", "run_autogluon.py", r, s, b,
                 ["--modalities", "image"]),
        ],
        "text": [
            ours("text", "text-ours", "ours text-only: shipped default (frozen, MLP head)", r, s, []),
            ours("text", "text-ours-ft", "ours text-only: every weight trained", r, s,
                 ["model.freeze_encoders=false", "data.feature_cache=null", "train.epochs=4"]),
            peer("text", "text-hf", "transformers.Trainer (every weight trained)", "hf", "run_hf_trainer.py", r, s, b,
                 ["--epochs", "10"]),
        ],
    }
    return [c for job in jobs for c in plan[job]]


def run_measured(c: Contender, limit_s: float) -> None:
    """Run one contender; record wall time, peak RSS of its process tree, output line times and the exit code."""
    os.makedirs(c.out, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=REPO if c.ours else HERE, RACE_T0=str(time.time()),
               OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")
    lines: list[tuple[float, str]] = []
    load_before = os.getloadavg()[0]
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.Popen(c.argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def reader() -> None:
        for line in proc.stdout:
            lines.append((time.monotonic() - t0, line.rstrip("\n")))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    peak, root = 0, psutil.Process(proc.pid)
    timed_out = False
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        if time.monotonic() - t0 > limit_s:
            timed_out = True
            for p in [*root.children(recursive=True), root]:
                p.kill()
        time.sleep(0.5)
    thread.join(timeout=10)
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # every waited-for descendant, contenders run one by one
    cpu_s = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    with open(os.path.join(c.out, "race-log.txt"), "w") as f:
        f.writelines(f"[{t:8.1f}s] {line}\n" for t, line in lines)
    c.measured = {"rc": proc.returncode, "timed_out": timed_out, "wall_s": round(time.monotonic() - t0, 1),
                  "cpu_s": round(cpu_s, 1),
                  "peak_rss_mib": round(peak / 2**20), "load_before": round(load_before, 1),
                  "load_after": round(os.getloadavg()[0], 1), "lines": lines}


def time_to_best_ours(lines: list[tuple[float, str]], wall: float) -> float:
    """When the last "(best)" validation line of our trainer appeared; the wall time when there is none (probe)."""
    best = [t for t, line in lines if re.match(r"epoch \d+/\d+: .*\(best\)", line.strip())]
    return round(best[-1], 1) if best else wall


def score(c: Contender, splits: dict[str, str]) -> dict:
    """Test metrics (one scorer for every peer; ours from its metrics.json) and time to the best validation score."""
    m = c.measured
    if m["rc"] != 0:
        return {"error": f"exit {m['rc']}" + (" (killed at the limit)" if m["timed_out"] else "")}
    if c.ours:
        metrics = json.load(open(os.path.join(c.out, "metrics.json")))
        test, ttb = metrics["test"], time_to_best_ours(m["lines"], m["wall_s"])
        if c.job == "retrieve":
            return {"t2i_R@1": test["text_to_image/R@1"], "t2i_R@5": test["text_to_image/R@5"],
                    "i2t_R@1": test["image_to_text/R@1"], "i2t_R@5": test["image_to_text/R@5"],
                    "rsum": test["rsum"], "time_to_best_s": ttb}
        return {"accuracy": test["accuracy"], "macro_f1": test["macro_f1"], "time_to_best_s": ttb}
    result = json.load(open(os.path.join(c.out, "result.json")))
    ttb = result.get("time_to_best_s")
    if c.job == "retrieve":
        _, _, pairs = retrieval_index(read_split(splits["test"], ["text", "image"]))
        r = retrieval_metrics(np.load(os.path.join(c.out, "test_text.npy")),
                              np.load(os.path.join(c.out, "test_image.npy")), pairs)
        return {**{k: r[k] for k in ("t2i_R@1", "t2i_R@5", "i2t_R@1", "i2t_R@5", "rsum")}, "time_to_best_s": ttb}
    pred = pd.read_csv(os.path.join(c.out, "predictions.csv"), keep_default_na=False).astype(str)
    vocab = sorted(set(read_split(splits["train"], ["label"])["label"].astype(str)))
    return {"accuracy": accuracy_score(pred["label"], pred["prediction"]),
            "macro_f1": f1_score(pred["label"], pred["prediction"], labels=vocab, average="macro", zero_division=0),
            "time_to_best_s": ttb}


def table(rows: list[dict]) -> str:
    """Markdown tables per job: the contenders' scores and costs, then ours/peer ratios for every pair."""
    out = []
    for job in dict.fromkeys(r["job"] for r in rows):
        group = [r for r in rows if r["job"] == job]
        keys = ["t2i_R@1", "t2i_R@5", "i2t_R@1", "i2t_R@5"] if job == "retrieve" else ["accuracy", "macro_f1"]
        out += [f"\n### {job}\n", "| contender | " + " | ".join(keys) + " | wall s | CPU s | to best s | peak RSS MiB | load |",
                "|---" * (len(keys) + 6) + "|"]
        for r in group:
            s = r["score"]
            vals = s["error"] + " |" * (len(keys) - 1) if "error" in s else " | ".join(f"{s[k]:.3f}" for k in keys)
            ttb = s.get("time_to_best_s")
            cpu = r.get("cpu_s")
            out.append(f"| {r['name']} | {vals} | {r['wall_s']:.0f} | {'-' if cpu is None else f'{cpu:.0f}'} | "
                       f"{'' if ttb is None else f'{ttb:.0f}'} | {r['peak_rss_mib']} | "
                       f"{r['load_before']:.0f}-{r['load_after']:.0f} |")
        ok = [r for r in group if "error" not in r["score"]]
        pairs = [(a, b) for a in ok if a["ours"] for b in ok if not b["ours"]]
        if pairs:
            out += ["", f"| ours / peer | {keys[0]} | wall | CPU | to best | peak RSS |", "|---|---|---|---|---|---|"]
            out += [f"| {a['name']} / {b['name']} | {_ratio(a['score'][keys[0]], b['score'][keys[0]])} | "
                    f"{_ratio(a['wall_s'], b['wall_s'])} | {_ratio(a.get('cpu_s'), b.get('cpu_s'))} | "
                    f"{_ratio(a['score'].get('time_to_best_s'), b['score'].get('time_to_best_s'))} | "
                    f"{_ratio(a['peak_rss_mib'], b['peak_rss_mib'])} |" for a, b in pairs]
    return "\n".join(out)


def _ratio(a: float | None, b: float | None) -> str:
    """a / b to two places, or "-" when either is missing or b is zero."""
    return f"{a / b:.2f}" if a is not None and b else "-"


def main() -> None:
    """Prepare the split, run every contender one after another, print and save the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="manifest.csv (text, image, label[, group, split])")
    p.add_argument("--jobs", default="classify,retrieve,text")
    p.add_argument("--budget-s", type=float, default=900, help="training time budget of every contender")
    p.add_argument("--kill-factor", type=float, default=2.0, help="kill a contender after this x the budget")
    p.add_argument("--only", default="", help="comma-separated contender keys to run (default: all of the jobs)")
    p.add_argument("--skip", default="", help="comma-separated contender keys to leave out")
    p.add_argument("--out", required=True, help="results folder, outside the repository")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-rows", type=int, default=None, help="seeded sample of at most N rows per split")
    args = p.parse_args()
    splits = prepare_splits(args.data, os.path.join(args.out, "data"), args.seed, args.max_rows)
    only, skip = ({k for k in v.split(",") if k} for v in (args.only, args.skip))
    rows = []
    for c in contenders(args.jobs.split(","), splits, args.out, args.budget_s):
        if (only and c.key not in only) or c.key in skip:
            continue
        print(f"== {c.job}: {c.name}\n   {' '.join(c.argv)}", flush=True)
        run_measured(c, args.budget_s * args.kill_factor)
        row = {"job": c.job, "key": c.key, "name": c.name, "ours": c.ours, "command": c.argv,
               **{k: v for k, v in c.measured.items() if k != "lines"}}
        row["score"] = score(c, splits)
        print(f"   -> {json.dumps({k: v for k, v in row.items() if k != 'command'})}", flush=True)
        rows.append(row)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"data": args.data, "splits": splits, "budget_s": args.budget_s, "rows": rows}, f, indent=2)
    print(table(rows))


if __name__ == "__main__":
    main()
