"""Shared helpers for the benchmark scripts: side-by-side alternating timing and ratio printing."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


def machine_info() -> dict:
    """Describe the machine a benchmark ran on, for BENCHMARKS.md."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def alternate(candidates: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run each candidate in turn, `repeats` rounds, so drift on a shared machine hits all alike.

    Each candidate returns the seconds it measured (so it can exclude its own set-up).
    The order rotates every round to cancel position effects.
    """
    names = list(candidates)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            times[name].append(candidates[name]())
    return times


def timed(fn: Callable[[], object]) -> float:
    """Seconds taken by one call of `fn`, synchronising CUDA if it is in use."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def summarise(times: dict[str, list[float]], baseline: str) -> dict[str, dict[str, float]]:
    """Median time per candidate and its ratio to `baseline` (ratio > 1 means slower than baseline)."""
    base = statistics.median(times[baseline])
    out = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        out[name] = {
            "median_s": med,
            "min_s": min(ts),
            "max_s": max(ts),
            "ratio_to_" + baseline: med / base,
        }
    return out


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    """Print rows as an aligned Markdown table."""
    print(f"\n### {title}\n")
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)) + " |")


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return "" if v is None else str(v)


def write_json(path: str | None, payload: dict) -> None:
    """Write results to `path` (if given) with the machine description."""
    if not path:
        return
    payload = {"machine": machine_info(), **payload}
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)


class ListDataset(torch.utils.data.Dataset):
    """A dataset over already-collated batches (DataLoader with batch_size=None yields them as-is)."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        return self.batches[i]


def list_loader(batches: list) -> torch.utils.data.DataLoader:
    """A DataLoader that replays pre-collated batches, so timing excludes data loading."""
    return torch.utils.data.DataLoader(ListDataset(batches), batch_size=None, shuffle=False)


def trainer_epoch_runner(model, loader, out_dir: str, **train_kwargs) -> Callable[[], float]:
    """A callable that runs one epoch of the framework Trainer's step loop over `loader` and returns seconds."""
    from multimodal.config import TrainConfig
    from multimodal.training import Trainer

    settings = {"epochs": 10_000, "log_with": "none", "save_checkpoints": False, "seed": 0, **train_kwargs}
    trainer = Trainer(model, TrainConfig(output_dir=out_dir, **settings), loader)
    trainer.model.train()
    epoch = [0]

    def run() -> float:
        trainer.state.batch_in_epoch = 0
        seconds = timed(lambda: trainer._train_epoch(epoch[0], trainer.train_loader, 0))
        epoch[0] += 1
        return seconds

    return run


def run_child(cmd: list[str], what: str) -> dict | None:
    """Run a benchmark's ``--one`` child process; its last ``RESULT {json}`` line, or None (stderr printed)."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(f"{what} failed:\n{proc.stderr[-3000:]}", flush=True)
        return None
    row = json.loads(lines[-1][len("RESULT "):])
    print(row, flush=True)
    return row
