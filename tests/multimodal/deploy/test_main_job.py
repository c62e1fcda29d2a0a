"""Done-when check: the README's main job (pretrained MiniLM + EfficientNet-Lite0, frozen + cached, concat fusion)
is predicted from the CLI, exported, quantized, served and queried with curl, and the Deploy page's Python
examples (docs/deploy.md) run as written against it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import httpx
import pytest
from deploy_helpers import free_port

from multimodal.data.manifest import read_manifest
from multimodal.deploy import Predictor
from multimodal.deploy.cli import export_main, predict_main, quantize_main

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "recipes"))


def _accuracy(preds: list[dict], rows: list[dict]) -> float:
    return sum(p["label"] == str(r["label"]) for p, r in zip(preds, rows)) / len(rows)


@pytest.mark.slow
def test_the_main_job_ships(tmp_path, monkeypatch):
    import text_image_classification as recipe

    monkeypatch.chdir(tmp_path)  # the docs' relative paths: outputs/..., deploy/..., preds.jsonl
    recipe.main(["eval.baselines=false", "train.epochs=4", "train.progress_bar=false", "train.log_with=none"])
    model = "outputs/text_image_classification/model"
    test_csv = "outputs/text_image_classification/splits/test.csv"
    rows = read_manifest(test_csv)

    # predict (PyTorch folder), export, quantize: each from its CLI
    assert predict_main(["--model", model, "--data", test_csv, "--output", "preds.jsonl", "--no-progress"]) == 0
    torch_preds = [json.loads(line) for line in open("preds.jsonl")]
    assert _accuracy(torch_preds, rows) > 0.8  # chance is 0.25; either modality alone ~0.5
    assert export_main(["--model", model, "--format", "onnx", "--output", "deploy/onnx"]) == 0
    assert quantize_main(["--model", "deploy/onnx", "--output", "deploy/int8"]) == 0
    config = json.load(open("deploy/int8/deploy.json"))
    assert config["quantization"]["bytes"]["quantized"] < 0.4 * config["quantization"]["bytes"]["fp32"]
    onnx_preds = Predictor.from_pretrained("deploy/onnx").predict(
        [{"text": r["text"], "image": r["image"]} for r in rows], base_dir=os.path.dirname(test_csv))
    assert [p["label"] for p in onnx_preds] == [p["label"] for p in torch_preds]
    int8 = Predictor.from_pretrained("deploy/int8").predict(
        [{"text": r["text"], "image": r["image"]} for r in rows], base_dir=os.path.dirname(test_csv))
    assert abs(_accuracy(int8, rows) - _accuracy(torch_preds, rows)) <= 0.05

    # serve the int8 folder and ask curl
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "multimodal.deploy.server", "--model", "deploy/int8", "--port",
                               str(port)], env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        image = os.path.join(os.path.dirname(test_csv), rows[0]["image"])
        curl = shutil.which("curl")
        assert curl, "curl is needed for this test"
        out = subprocess.run([curl, "-s", f"http://127.0.0.1:{port}/predict", "-F", f"text={rows[0]['text']}",
                              "-F", f"image=@{image}"], capture_output=True, text=True, timeout=120)
        (answer,) = json.loads(out.stdout)["predictions"]
        assert answer["label"] == int8[0]["label"]
    finally:
        server.terminate()
        server.wait(timeout=60)

    # the Deploy page's Python examples, as written (reading preds.jsonl, then the Predictor)
    deploy = open(os.path.join(ROOT, "docs", "deploy.md"), encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", deploy, flags=re.S)
    assert len(blocks) == 2
    namespace: dict = {"__name__": "docs_deploy"}
    for block in blocks:
        exec(compile(block, "docs/deploy.md", "exec"), namespace)
    assert namespace["first"]["row"] == 1 and namespace["first"]["label"] == torch_preds[0]["label"]
    assert namespace["prediction"]["label"] in Predictor.from_pretrained(model).labels
