"""The hostile-media corpus through the Predictor (a counted, named skip per refused file, predictions for the rest)
and, with a marker-writing fake `gs` first on PATH, through the Predictor and the server: nothing runs it."""

from __future__ import annotations

import os
import subprocess
import sys

from multimodal.deploy import Predictor

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
FAKE_GS = "#!/bin/sh\necho ran > \"$MARKER\"\nexit 1\n"


def test_the_predictor_skips_each_refused_file_naming_it_and_predicts_the_rest(fused_onnx, hostile_corpus):
    _, cases = hostile_corpus
    rows = []
    for case in cases:
        if case.modality == "text":
            with open(case.path) as f:
                rows.append({"text": f.read()})
        else:
            rows.append({case.modality: case.path})
    predictor = Predictor.from_pretrained(fused_onnx, batch_size=8)
    results = list(predictor.predict_iter(rows, on_bad_row="skip"))
    assert [i for i, _, _ in results] == list(range(len(cases)))
    for case, (i, prediction, error) in zip(cases, results):
        if case.expect == "accept":
            assert error is None and prediction["label"] in predictor.labels, (case.name, error)
        else:
            assert prediction is None and f"row {i + 1}: field '{case.modality}'" in error, (case.name, error)
            assert case.because in error, (case.name, error)


SCRIPT = """
import io, os, sys
from starlette.testclient import TestClient
from multimodal.data import MultimodalDataset
from multimodal.data.media import load_sample
from multimodal.deploy import Predictor
from multimodal.deploy.server import create_app
data = MultimodalDataset([{"image": sys.argv[2]}] * 2, {"image": "image"}, None, None, on_bad_sample="skip")
assert len(data) == 0 and "looks like EPS" in data.skipped.examples[0], data.skipped
for value in (sys.argv[2], {"path": sys.argv[2]}):
    try:
        load_sample("image", value)
        raise AssertionError("an EPS decoded")
    except ValueError as err:
        assert "looks like EPS" in str(err)
predictor = Predictor.from_pretrained(sys.argv[1])
eps = open(sys.argv[2], "rb").read()
preds = list(predictor.predict_iter([{"image": sys.argv[2]}, {"image": {"bytes": eps}}], on_bad_row="skip"))
assert [p is None and "looks like EPS" in e for _, p, e in preds] == [True, True], preds
with TestClient(create_app(predictor)) as client:
    answer = client.post("/predict", files={"image": ("x.eps", eps, "application/postscript")})
    assert answer.status_code == 400 and "looks like EPS" in answer.json()["error"], answer.text
print("ok")
"""


def test_no_path_runs_ghostscript_for_an_eps_while_pillow_alone_would(tmp_path, fused_dir, hostile_corpus):
    """The manifest path, the decode layer, the Predictor (path and bytes) and the server, in one process whose PATH
    starts with a `gs` that writes a marker; then Pillow alone, which finds and runs it (so the check can fail)."""
    folder, _ = hostile_corpus
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gs").write_text(FAKE_GS)
    (bin_dir / "gs").chmod(0o755)
    marker = tmp_path / "marker"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "MARKER": str(marker), "PYTHONPATH": ROOT,
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, fused_dir, os.path.join(folder, "x.eps")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
    assert not marker.exists()
    pillow = f"from PIL import Image\ntry:\n    Image.open({os.path.join(folder, 'x.eps')!r}).load()\nexcept Exception:\n    pass\n"
    subprocess.run([sys.executable, "-c", pillow], env=env, timeout=120)
    assert marker.read_text().strip() == "ran"
