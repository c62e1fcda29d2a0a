"""train.method=auto under DDP: every process runs the candidates the main process's budget decisions allow."""

from __future__ import annotations

import json
import os
import subprocess
import sys

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_auto_agreement.py")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_processes_take_the_main_process_budget_decisions(tmp_path):
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--mixed_precision", "no", "--dynamo_backend", "no", WORKER, str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # process 1's own clock would have skipped every trained candidate
    assert set(ranks[0].values()) == {"ran"}
