"""Two "machines" on this host (`accelerate launch --num_machines 2 --machine_rank 0/1`, one CPU process each):
both ranks end with the same weights, validation counts each example once, and a hung rank fails the job."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_rank_report.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp_path, tiny_text_dir, **train) -> str:
    os.makedirs(tmp_path / "img", exist_ok=True)
    rows = []
    for i in range(21):
        day = i % 2 == 0
        Image.fromarray(np.full((16, 16, 3), 210 if day else 30, np.uint8)).save(tmp_path / "img" / f"{i}.png")
        rows.append({"text": f"{'sunny' if day else 'dark'} scene {i}", "image": f"img/{i}.png",
                     "label": "day" if day else "night", "split": "validation" if i >= 14 else "train"})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    cfg = {"data": {"train": str(tmp_path / "m.csv"), "split_column": "split", "audio_column": None, "num_workers": 0,
                    "feature_cache": None},
           "model": {"encoders": {"text": f"text:{tiny_text_dir}", "image": "image:test_efficientnet"},
                     "encoder_kwargs": {"image": {"img_size": 32}}, "pretrained": False, "fusion_dim": 16,
                     "freeze_encoders": ["image"]},
           "train": {"output_dir": str(tmp_path / "out"), "epochs": 2, "batch_size": 2, "log_with": "none",
                     "progress_bar": False, "save_checkpoints": False, "dist_timeout_s": 20, **train},
           "eval": {"batch_size": 2}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return str(tmp_path / "cfg.yaml")


def _launch(config: str, port: int, rank: int, env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
           "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
           "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
           WORKER, config]
    # its own process group, so a kill reaches the workers that the launcher started too
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _kill(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _env(**extra) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               ACCELERATE_USE_CPU="1", **extra)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _wait(procs: list[subprocess.Popen], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    outputs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill(p)
            out, _ = p.communicate()
        outputs.append(out)
    return outputs


@pytest.mark.slow
def test_two_machines_train_one_model_and_count_each_example_once(tmp_path, tiny_text_dir):
    config = _config(tmp_path, tiny_text_dir)
    port = _free_port()
    procs = [_launch(config, port, rank, _env()) for rank in (0, 1)]
    outputs = _wait(procs, 240)
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    reports = [json.load(open(tmp_path / "out" / f"rank{r}.json")) for r in (0, 1)]
    assert [r["world"] for r in reports] == [2, 2]
    assert reports[0]["weights"] == reports[1]["weights"]  # gradients were averaged across the machines
    # 14 rows / 2 ranks = 7 each in batches of 2; the last batch of one is dropped (BatchNorm)
    assert reports[0]["train_batches"] == reports[1]["train_batches"] == 3
    for r in reports:  # 7 validation rows over 2 ranks in batches of 2: padded, then de-duplicated
        assert r["validation_rows"] == 7
        assert [h["num_examples"] for h in r["history"]] == [7, 7]
        assert [h["num_unique_examples"] for h in r["history"]] == [7, 7]
    assert reports[0]["history"] == reports[1]["history"]


@pytest.mark.slow
def test_a_hung_rank_fails_the_job_within_the_timeout(tmp_path, tiny_text_dir):
    config = _config(tmp_path, tiny_text_dir, dist_timeout_s=5)
    port = _free_port()
    start = time.monotonic()
    procs = [_launch(config, port, rank, _env(HANG_RANK="1")) for rank in (0, 1)]
    healthy = _wait(procs[:1], 120)[0]
    elapsed = time.monotonic() - start
    _kill(procs[1])  # the hung machine; on a cluster the scheduler does this (srun --kill-on-bad-exit)
    procs[1].communicate()
    assert procs[0].returncode not in (0, None), healthy[-2000:]
    assert elapsed < 100, f"rank 0 waited {elapsed:.0f} s"
    assert "timed out" in healthy.lower() or "timeout" in healthy.lower(), healthy[-2000:]
