"""`encoders` and `fusion` sit below `multimodal`: importing them (old alias modules too) never loads it."""

from __future__ import annotations

import os
import subprocess
import sys

import fusion


def test_encoders_and_fusion_never_import_multimodal():
    script = ("import sys, encoders, encoders.factory, fusion, fusion.contrastive, fusion.losses; "
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'multimodal'))")
    root = os.path.dirname(os.path.dirname(fusion.__file__))
    env = {**os.environ, "PYTHONPATH": root}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"  # the moved names are looked up only when used (with a warning)
