"""Fault injection: kill -9 a training run at random moments, resume it, and compare with an uninterrupted run.

Each trial trains the same small run (an image classifier with EMA, a checkpoint after every optimizer step,
`multimodal.run` end to end) in a child process and kills it with SIGKILL, `--kills` times, before letting it
finish. Kills alternate between two kinds:

* **inside a checkpoint write**: the child picks a random file write of a random checkpoint save (model,
  optimizer, scheduler, RNG state, EMA, or the trainer_state.json marker), keeps a random fraction of that
  file (none, all, or a random part), and SIGKILLs itself: what a kill in the middle of writing that file
  leaves on disk;
* **random moment**: the parent sends SIGKILL at a uniformly random time during training (mid-epoch, during
  evaluation, inside a checkpoint or model save: wherever it lands).

After each kill the run is resumed as a user would: ``train.resume_from=latest`` (or, when no checkpoint is
complete yet, a fresh start with ``train.overwrite_output_dir=true``). When it has finished, its best model,
its last checkpoint (weights, EMA) and its metrics are compared bit for bit with the uninterrupted run's.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/fault_injection.py [--trials 10] [--kills 2] [--seed 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STARTED = "FAULT-INJECTION: training started"
WRITES = 6  # files a checkpoint save writes here: model, optimizer, RNG state, scheduler, EMA, trainer_state.json

# -- the child: one training run, optionally killing itself inside a checkpoint write ---------------------------


def _overrides(data: str, out: str, epochs: int) -> list[str]:
    return [
        "data.demo=null", f"data.train={data}", "data.text_column=null", "data.audio_column=null",
        "data.num_workers=0", "data.val_fraction=0.25", "data.test_fraction=0.25", "data.feature_cache=null",
        "model.encoders={image: 'image:test_efficientnet'}", "model.encoder_kwargs={image: {img_size: 32}}",
        "model.pretrained=false", "model.fusion_dim=8", "model.head_dropout=0.3", "train.batch_size=4",
        f"train.epochs={epochs}", "train.save_every_steps=1", "train.keep_checkpoints=2", "train.log_every=1",
        "train.ema_decay=0.9", "train.seed=7", "train.log_with=none", "train.progress_bar=false",
        "eval.baselines=false", f"train.output_dir={out}",
    ]


def _inject(plan: dict) -> None:
    """Count checkpoint saves and their file writes; at write `plan['event']` of save `plan['save']` (if given),
    keep `plan['fraction']` of that file and SIGKILL this process."""
    import accelerate.checkpointing as acc_ckpt
    import torch

    import multimodal.training.checkpoints as ckpt
    import multimodal.training.ema as ema
    import multimodal.training.trainer as trainer

    state = {"save": 0, "event": 0, "depth": 0}

    def die(path: str) -> None:
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(int(size * plan["fraction"]))
        print(f"FAULT-INJECTION: killed in save {state['save']}, write {state['event']} ({os.path.basename(path)}, "
              f"{plan['fraction']:.2f} of {size} bytes)", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    def writes(fn, path_arg: int):
        def wrapper(*args, **kwargs):
            state["depth"] += 1
            try:
                result = fn(*args, **kwargs)
            finally:
                state["depth"] -= 1
            if state["save"] and state["depth"] == 0:
                state["event"] += 1
                if state["save"] == plan.get("save") and state["event"] == plan.get("event"):
                    die(os.fspath(args[path_arg]))
            return result
        return wrapper

    def marker(path, obj, indent=2):  # the state file: kill the atomic writer before its rename
        state["event"] += 1
        if state["save"] == plan.get("save") and state["event"] == plan.get("event"):
            text = json.dumps(obj, indent=indent)
            tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.killed.tmp")
            with open(tmp, "w") as f:
                f.write(text)
            die(tmp)
        return real_write_json(path, obj, indent)

    def saving(fn):
        def wrapper(*args, **kwargs):
            state["save"] += 1
            state["event"] = 0
            print(f"FAULT-INJECTION: save {state['save']}", flush=True)
            result = fn(*args, **kwargs)
            print(f"FAULT-INJECTION: saved {state['save']}", flush=True)
            return result
        return wrapper

    real_write_json = ckpt.write_json
    acc_ckpt.save = writes(acc_ckpt.save, 1)
    torch.save = writes(torch.save, 1)
    ema.save_file = writes(ema.save_file, 1)
    ckpt.write_json = marker
    trainer.save_checkpoint = saving(trainer.save_checkpoint)


def worker(args: argparse.Namespace) -> int:
    """Run (or resume) the training run in this process, as `multimodal.run` does for a recipe."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    from multimodal import load_config, run
    from multimodal.errors import user_errors
    from multimodal.training import Trainer

    plan = json.loads(args.plan)
    _inject(plan)
    real_train, real_load = Trainer.train, Trainer.load_checkpoint

    def train(self):
        if not self.config.resume_from:
            print(f"{STARTED} at step 0", flush=True)
        return real_train(self)

    def load_checkpoint(self, path):
        real_load(self, path)
        print(f"{STARTED} at step {self.state.global_step}", flush=True)

    Trainer.train, Trainer.load_checkpoint = train, load_checkpoint
    extra = ["train.resume_from=latest"] if plan.get("resume") else []
    extra += ["train.overwrite_output_dir=true"] if plan.get("fresh") else []
    with user_errors():
        run(load_config(None, _overrides(args.data, args.out, args.epochs) + extra))
    return 0


# -- the parent: trials, kills, resumes, comparisons ----------------------------------------------------------


def make_data(root: str, n: int = 32) -> str:
    """A learnable manifest of small images (bright = day, dark = night)."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        day = i % 2 == 0
        pixels = np.clip((200 if day else 50) + rng.normal(0, 25, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(root, "img", f"{i}.png"))
        rows.append({"image": f"img/{i}.png", "label": "day" if day else "night"})
    path = os.path.join(root, "train.csv")
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def child(data: str, out: str, epochs: int, plan: dict, kill_at: float | None = None,
          timing: tuple[float, int] = (0.0, 1)) -> dict:
    """Run the worker; with `kill_at`, SIGKILL it at that fraction of what is left of its run, estimated from
    `timing` (the uninterrupted run's seconds from the start of training to its end, and its optimizer steps)."""
    env = dict(os.environ, PYTHONPATH=ROOT, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--data", data, "--out", out,
           "--epochs", str(epochs), "--plan", json.dumps(plan)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, started, killed_by_parent = [], None, False
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith(STARTED) and started is None:
            started = time.time()
            if kill_at is not None:
                left = 1.0 - int(line.rsplit(" ", 1)[1]) / timing[1]
                time.sleep(kill_at * timing[0] * max(left, 0.05))
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed_by_parent = True
    proc.wait()
    return {"rc": proc.returncode, "stdout": lines, "output": "\n".join(lines), "killed_by_parent": killed_by_parent,
            "train_s": (time.time() - started) if started else None}


def resume(data: str, out: str, epochs: int, plan: dict, kill_at: float | None = None,
           timing: tuple[float, int] = (0.0, 1)) -> dict:
    """Resume from the newest usable checkpoint, or start afresh when none is complete (what the error says)."""
    result = child(data, out, epochs, {**plan, "resume": True}, kill_at, timing)
    if result["rc"] == 1 and "nothing to resume" in result["output"]:
        result = child(data, out, epochs, {**plan, "fresh": True}, kill_at, timing)
        result["restarted"] = True
    return result


def outputs(out: str) -> dict:
    """What is compared: the best model, the last checkpoint's weights and EMA, and the metrics."""
    import torch
    from safetensors.torch import load_file

    from multimodal.training.checkpoints import checkpoints

    last = checkpoints(os.path.join(out, "checkpoints"))[-1]
    tensors = {f"model/{k}": v for k, v in load_file(os.path.join(out, "model", "model.safetensors")).items()}
    for name in ("model.safetensors", "ema.safetensors"):
        tensors.update({f"{os.path.basename(last)}/{name}/{k}": v for k, v in load_file(os.path.join(last, name)).items()})
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    keep = {k: metrics[k] for k in ("validation", "test", "best_epoch", "epochs_run")}
    # An epoch's mean training loss in history covers the batches run since a mid-epoch resume: kept apart.
    keep["history"] = [{k: v for k, v in h.items() if k != "train_loss"} for h in metrics["history"]]
    train_loss = [h.get("train_loss") for h in metrics["history"]]
    return {"tensors": tensors, "metrics": keep, "train_loss": train_loss, "last": os.path.basename(last),
            "equal": torch.equal}


def same(a: dict, b: dict) -> bool:
    """Bit-identical tensors under the same names, and equal validation/test metrics and per-epoch history."""
    return (a["last"] == b["last"] and a["tensors"].keys() == b["tensors"].keys()
            and all(a["equal"](a["tensors"][k], b["tensors"][k]) for k in a["tensors"]) and a["metrics"] == b["metrics"])


def trial(data: str, work: str, epochs: int, kills: int, rng: random.Random, reference: dict,
          timing: tuple[float, int], saves: int) -> dict:
    """One run killed `kills` times (alternating a checkpoint write and a random moment), then finished."""
    out = os.path.join(work, "out")
    shutil.rmtree(out, ignore_errors=True)
    log = []
    first = True
    for k in range(kills):
        if k % 2 == 0:  # a resumed process has fewer saves ahead: kill it in one of its first three
            plan, delay = {"save": rng.randint(1, saves if first else 3), "event": rng.randint(1, WRITES),
                           "fraction": rng.choice([0.0, 1.0, rng.random()])}, None
            what = f"inside save {plan['save']}, write {plan['event']}, keeping {plan['fraction']:.2f}"
        else:
            plan, delay = {}, rng.random()
            what = f"SIGKILL {delay:.0%} into what was left of the run"
        result = (child if first else resume)(data, out, epochs, plan, delay, timing)
        first = False
        killed = result["rc"] == -signal.SIGKILL
        if result["rc"] not in (0, -signal.SIGKILL):
            raise RuntimeError(f"worker failed (rc {result['rc']}):\n{result['output'][-3000:]}")
        log.append({"kill": what, "killed": killed, "landed": _landed(result), "restarted": result.get("restarted", False),
                    "skipped": sum("resume_from=latest: skipped" in line for line in result["stdout"])})
        if not killed:
            break  # it finished before the kill came
    final = resume(data, out, epochs, {}) if log[-1]["killed"] else {"rc": 0, "stdout": [], "output": ""}
    if final["rc"] != 0:
        raise RuntimeError(f"final resume failed (rc {final['rc']}):\n{final['output'][-3000:]}")
    resumed = [line for line in final["stdout"] if line.startswith("resumed from")]
    got = outputs(out)
    return {"kills": log, "final_resume": resumed[0] if resumed else None,
            "final_skipped": sum("resume_from=latest: skipped" in line for line in final["stdout"]),
            "bit_identical": same(got, reference), "train_loss_identical": got["train_loss"] == reference["train_loss"]}


def _landed(result: dict) -> str:
    """Where the kill hit: an injected checkpoint write, or for the parent's kill, inside a save or elsewhere."""
    marks = [line for line in result["stdout"] if line.startswith("FAULT-INJECTION: ")]
    if any(m.startswith("FAULT-INJECTION: killed in") for m in marks):
        return "checkpoint write"
    if not result["killed_by_parent"]:
        return "-"
    inside = bool(marks) and marks[-1].startswith("FAULT-INJECTION: save ")
    return "random: inside a checkpoint save" if inside else "random: training or evaluation"


def main() -> None:
    """Parse arguments; run the worker or the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--kills", type=int, default=2, help="kills per trial (alternating random moment / write)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--plan", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        raise SystemExit(worker(args))
    work = args.workdir or tempfile.mkdtemp(prefix="fault-injection-")
    data = make_data(os.path.join(work, "data"))
    start = time.time()
    ref_run = child(data, os.path.join(work, "reference"), args.epochs, {})
    if ref_run["rc"] != 0:
        raise SystemExit(f"reference run failed:\n{ref_run['output'][-3000:]}")
    reference = outputs(os.path.join(work, "reference"))
    saves = sum(line.startswith("FAULT-INJECTION: save ") for line in ref_run["stdout"])
    steps = json.load(open(os.path.join(work, "reference", "metrics.json")))["history"][-1]["step"]
    perturbed = dict(reference, tensors={k: v.clone() for k, v in reference["tensors"].items()})
    first = next(k for k, v in perturbed["tensors"].items() if v.is_floating_point() and v.numel())
    perturbed["tensors"][first].view(-1)[0] += 1e-6
    assert same(reference, reference) and not same(reference, perturbed)  # the comparison can fail
    rng = random.Random(args.seed)
    trials = []
    for t in range(args.trials):
        result = trial(data, os.path.join(work, f"trial-{t}"), args.epochs, args.kills, rng, reference,
                       (ref_run["train_s"], steps), saves)
        trials.append(result)
        print(json.dumps({"trial": t, **result}), flush=True)
    kills = [k for t in trials for k in t["kills"] if k["killed"]]
    summary = {
        "trials": len(trials), "kills": len(kills),
        "kills_in_checkpoint_writes": sum(k["landed"] == "checkpoint write" for k in kills),
        "kills_at_random_moments": sum(k["landed"].startswith("random") for k in kills),
        "random_kills_inside_a_save": sum(k["landed"] == "random: inside a checkpoint save" for k in kills),
        "restarts_from_scratch": sum(k["restarted"] for t in trials for k in t["kills"]),
        "resumes_that_skipped_damaged_folders": sum(bool(k["skipped"]) for t in trials for k in t["kills"])
        + sum(bool(t["final_skipped"]) for t in trials),
        "bit_identical_trials": sum(t["bit_identical"] for t in trials),
        "history_train_loss_identical_trials": sum(t["train_loss_identical"] for t in trials),
        "reference_train_s": round(ref_run["train_s"], 1), "wall_s": round(time.time() - start, 1),
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "trials": trials}, f, indent=1)


if __name__ == "__main__":
    main()
