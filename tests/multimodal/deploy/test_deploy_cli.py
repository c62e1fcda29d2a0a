"""multimodal-predict / -export / -quantize as a user runs them: JSON lines in input order, bad rows named
or counted, user errors without tracebacks, exported and int8 folders that predict like the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from multimodal.deploy import Predictor
from multimodal.deploy.cli import export_main, predict_main, quantize_main

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def _lines(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def _copy_test_split(demo_run, tmp_path, bad: bool = False) -> str:
    table = pd.read_csv(os.path.join(demo_run, "splits", "test.csv"), keep_default_na=False, dtype=object)
    rows = table.to_dict("records")[:12]
    if bad:
        rows[2]["image"] = str(tmp_path / "gone.png")
        (tmp_path / "corrupt.png").write_bytes(b"not a png")
        rows[5]["image"] = "corrupt.png"
        rows[7]["text"], rows[7]["image"] = "", ""
    path = tmp_path / "data.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def test_predict_cli_writes_one_line_per_row_in_order(tmp_path, demo_run, capsys):
    model = os.path.join(demo_run, "model")
    data = _copy_test_split(demo_run, tmp_path)
    assert predict_main(["--model", model, "--data", data, "--output", str(tmp_path / "p.jsonl"), "--batch-size", "5",
                         "--no-progress"]) == 0
    lines = _lines(tmp_path / "p.jsonl")
    rows = pd.read_csv(data, keep_default_na=False).to_dict("records")
    expected = Predictor.from_pretrained(model).predict([{"text": r["text"], "image": r["image"]} for r in rows])
    assert [line["row"] for line in lines] == list(range(1, 13))
    assert [line["label"] for line in lines] == [p["label"] for p in expected]
    assert all(set(line["probabilities"]) == set(Predictor.from_pretrained(model).labels) for line in lines)
    assert "predicted 12 of 12 rows" in capsys.readouterr().err


def test_predict_cli_bad_rows_stop_with_the_row_or_are_counted(tmp_path, demo_run, capsys):
    model, data = os.path.join(demo_run, "model"), _copy_test_split(demo_run, tmp_path, bad=True)
    out = tmp_path / "p.jsonl"
    with pytest.raises(SystemExit) as info:
        predict_main(["--model", model, "--data", data, "--output", str(out), "--no-progress"])
    assert str(info.value).startswith(f"error: {data}: row 3 (line 4): field 'image' (file {tmp_path / 'gone.png'})")
    assert not out.exists()  # nothing half-written
    assert predict_main(["--model", model, "--data", data, "--output", str(out), "--on-bad-row", "skip",
                         "--no-progress"]) == 0
    lines = _lines(out)
    assert len(lines) == 12 and [i for i, line in enumerate(lines) if "error" in line] == [2, 5, 7]
    assert "corrupt.png" in lines[5]["error"] and "no input given" in lines[7]["error"]
    err = capsys.readouterr().err
    assert "predicted 9 of 12 rows" in err and "3 bad row(s) skipped" in err


def test_predict_cli_user_errors_have_no_traceback(tmp_path, demo_run):
    model, data = os.path.join(demo_run, "model"), _copy_test_split(demo_run, tmp_path)
    env = dict(os.environ, PYTHONPATH=ROOT)
    # one real process: status 1 and the message alone on stderr
    proc = subprocess.run([sys.executable, "-m", "multimodal.deploy.cli", "predict", "--model", str(tmp_path / "nope"),
                           "--data", data, "--output", str(tmp_path / "o.jsonl"), "--no-progress"], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    # the other user errors in this process (an interpreter start each would cost ~7 s): the same SystemExit path
    cases = [
        (["--model", model, "--data", str(tmp_path / "none.csv")], "does not exist"),
        (["--model", model, "--data", data, "--image-column", "picture"], "column 'picture' (for the image modality)"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            predict_main([*args, "--output", str(tmp_path / "o.jsonl"), "--no-progress"])
        assert message in str(exit_info.value.code), exit_info.value.code
    # dropping a modality on purpose works
    assert predict_main(["--model", model, "--data", data, "--output", str(tmp_path / "t.jsonl"), "--image-column", "",
                         "--no-progress"]) == 0


def test_predict_cli_gives_embeddings_for_towers(tmp_path, dual_dir):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "a.png")
    pd.DataFrame([{"text": "a cat", "image": "a.png"}, {"text": "", "image": "a.png"}]).to_csv(tmp_path / "m.csv",
                                                                                             index=False)
    predict_main(["--model", dual_dir, "--data", str(tmp_path / "m.csv"), "--output", str(tmp_path / "e.jsonl"),
                  "--no-progress"])
    lines = _lines(tmp_path / "e.jsonl")
    assert sorted(lines[0]["embedding"]) == ["image", "text"] and sorted(lines[1]["embedding"]) == ["image"]


@pytest.mark.slow
def test_export_and_quantize_clis_predict_like_the_model(tmp_path, demo_run, capsys):
    model, data = os.path.join(demo_run, "model"), _copy_test_split(demo_run, tmp_path)
    assert export_main(["--model", model, "--output", str(tmp_path / "onnx")]) == 0
    assert "exported model (onnx)" in capsys.readouterr().out
    assert quantize_main(["--model", str(tmp_path / "onnx"), "--output", str(tmp_path / "int8")]) == 0
    assert export_main(["--model", model, "--output", str(tmp_path / "int8b"), "--quantize", "int8"]) == 0
    config = json.load(open(tmp_path / "int8" / "deploy.json"))
    sizes = config["quantization"]["bytes"]
    assert sizes["quantized"] < 0.6 * sizes["fp32"]  # the tiny BERT's embedding table and linears are int8
    preds = {}
    for name, folder in (("torch", model), ("onnx", tmp_path / "onnx"), ("int8", tmp_path / "int8"),
                         ("int8b", tmp_path / "int8b")):
        predict_main(["--model", str(folder), "--data", data, "--output", str(tmp_path / f"{name}.jsonl"), "--no-progress"])
        preds[name] = _lines(tmp_path / f"{name}.jsonl")
    assert [p["label"] for p in preds["onnx"]] == [p["label"] for p in preds["torch"]]
    for name in ("int8", "int8b"):
        gaps = [abs(a["probabilities"][k] - b["probabilities"][k]) for a, b in zip(preds[name], preds["onnx"])
                for k in a["probabilities"]]
        assert 0 < max(gaps) < 0.05, name  # changed by quantization, but only a little
    with pytest.raises(SystemExit, match="error: .*already quantized"):
        quantize_main(["--model", str(tmp_path / "int8"), "--output", str(tmp_path / "int8c")])
    with pytest.raises(SystemExit, match="error: .*exists and is not an exported folder"):
        export_main(["--model", model, "--output", str(tmp_path)])
