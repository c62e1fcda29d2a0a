"""Two "machines" on this host (`accelerate launch --num_machines 2 --machine_rank 0/1`, one CPU process each):
both ranks end with the same weights, validation counts each example once, and a hung rank fails the job."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import psutil
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


def _launch(config: str, port: int, rank: int, env: dict, log) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
           "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
           "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
           WORKER, config]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def _kill_tree(p: subprocess.Popen) -> None:
    """The launcher and every process under it (torchrun starts its workers in their own sessions)."""
    try:
        family = psutil.Process(p.pid).children(recursive=True) + [psutil.Process(p.pid)]
    except psutil.NoSuchProcess:
        return
    for q in family:
        try:
            q.kill()
        except psutil.NoSuchProcess:
            pass
    p.wait()


def _env(**extra) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               ACCELERATE_USE_CPU="1", **extra)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(tmp_path, config: str, env: dict, wait_for: tuple[int, ...], timeout: float) -> list[str]:
    """Launch both machines; wait (bounded) for the ranks in `wait_for`, then kill everything left."""
    port = _free_port()
    logs = [open(tmp_path / f"machine{r}.log", "w") for r in (0, 1)]  # noqa: SIM115
    procs = [_launch(config, port, r, env, logs[r]) for r in (0, 1)]
    deadline = time.monotonic() + timeout
    try:
        for r in wait_for:
            try:
                procs[r].wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    finally:
        codes = [p.poll() for p in procs]
        for p in procs:
            _kill_tree(p)
        for f in logs:
            f.close()
    return codes, [(tmp_path / f"machine{r}.log").read_text() for r in (0, 1)]


@pytest.mark.slow
def test_two_machines_train_one_model_and_count_each_example_once(tmp_path, tiny_text_dir):
    config = _config(tmp_path, tiny_text_dir)
    codes, outputs = _run(tmp_path, config, _env(), (0, 1), 240)
    assert codes == [0, 0], [o[-3000:] for o in outputs]
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
    start = time.monotonic()
    codes, outputs = _run(tmp_path, config, _env(HANG_RANK="1"), (0,), 120)
    elapsed = time.monotonic() - start
    # machine 0 ends with an error naming the timeout; machine 1 hangs until killed (on a cluster: the
    # scheduler, e.g. srun --kill-on-bad-exit=1, once machine 0 has failed)
    assert codes[0] not in (0, None) and codes[1] is None, outputs[0][-2000:]
    assert elapsed < 100, f"machine 0 waited {elapsed:.0f} s"
    assert "Timed out" in outputs[0] or "timeout" in outputs[0].lower(), outputs[0][-2000:]


@pytest.mark.slow
def test_two_machines_stream_shards_in_equal_steps(tmp_path, tiny_text_dir):
    from multimodal.data.shards import write_shards

    config = _config(tmp_path, tiny_text_dir)
    frame = pd.read_csv(tmp_path / "m.csv")
    frame[frame["split"] == "train"].to_csv(tmp_path / "train.csv", index=False)
    frame[frame["split"] == "validation"].to_csv(tmp_path / "val.csv", index=False)
    # 14 rows in shards of 4, 4, 4, 2: the ranks' shards hold different counts, yet both run 3 steps
    write_shards(str(tmp_path / "train.csv"), str(tmp_path / "shards"), {"text": "text", "image": "image"},
                 samples_per_shard=4)
    cfg = yaml.safe_load(open(config))
    cfg["data"].update({"train": None, "split_column": None, "webdataset": str(tmp_path / "shards" / "shard-{000000..000003}.tar"),
                        "validation": str(tmp_path / "val.csv"), "shuffle_buffer": 3})
    (tmp_path / "stream.yaml").write_text(yaml.safe_dump(cfg))
    codes, outputs = _run(tmp_path, str(tmp_path / "stream.yaml"), _env(), (0, 1), 240)
    assert codes == [0, 0], [o[-3000:] for o in outputs]
    reports = [json.load(open(tmp_path / "out" / f"rank{r}.json")) for r in (0, 1)]
    assert reports[0]["train_batches"] == reports[1]["train_batches"] == 3  # 14 // 2 = 7 -> 3 batches of 2
    assert reports[0]["weights"] == reports[1]["weights"]
    assert [h["num_unique_examples"] for h in reports[0]["history"]] == [7, 7]
