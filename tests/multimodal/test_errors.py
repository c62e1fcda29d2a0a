"""Recipes and CLIs: a user error exits non-zero with its message alone (``--debug`` / ``MULTIMODAL_DEBUG=1``: the
traceback); an internal error keeps its traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from multimodal.config import ConfigError
from multimodal.data import DataError
from multimodal.errors import DEBUG_ENV, user_errors
from multimodal.evaluation.cli import main as evaluate_main
from multimodal.tasks import runner
from multimodal.training import NonFiniteLossError
from multimodal.training.integrity import CheckpointError, NonFiniteWeightsError

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RECIPE = os.path.join(ROOT, "recipes", "text_image_classification.py")
CONFIG = os.path.join(ROOT, "recipes", "configs", "text_image_classification.yaml")


@pytest.fixture(autouse=True)
def _no_debug_env(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)


def test_recipe_user_error_is_the_message_alone(tmp_path):
    with pytest.raises(SystemExit) as info:
        runner.recipe_main(CONFIG, ["train.max_grad_norm=-1", f"train.output_dir={tmp_path}"])
    assert info.value.code == "config error: train.max_grad_norm: -1.0 is out of range; allowed: > 0 (null turns clipping off)"
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_debug_flag_and_env_raise_the_error_itself(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="train.epochs"):
        runner.recipe_main(CONFIG, ["--debug", "train.epochs=0"])
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(ConfigError, match="train.epochs"):
        runner.recipe_main(CONFIG, ["train.epochs=0"])
    monkeypatch.setenv(DEBUG_ENV, "0")
    with pytest.raises(SystemExit):
        runner.recipe_main(CONFIG, ["train.epochs=0"])


def test_internal_error_keeps_its_traceback(tmp_path, monkeypatch):
    def broken(cfg, dataset=None):
        raise RuntimeError("a bug in the framework")

    monkeypatch.setattr(runner, "run", broken)
    with pytest.raises(RuntimeError, match="a bug in the framework"):
        runner.recipe_main(CONFIG, [f"train.output_dir={tmp_path}"])


def test_data_error_from_a_manifest(tmp_path):
    (tmp_path / "train.csv").write_text("caption,picture,label\na,b,c\n")
    with pytest.raises(SystemExit) as info:
        runner.recipe_main(CONFIG, ["data.demo=null", f"data.train={tmp_path / 'train.csv'}",
                                    f"train.output_dir={tmp_path / 'out'}"])
    assert str(info.value.code).startswith("error: ")
    assert "train.csv" in str(info.value.code) and "not found" in str(info.value.code)


@pytest.mark.parametrize("error", [ConfigError("c"), DataError("d"), NonFiniteLossError("n"), CheckpointError("k"),
                                   NonFiniteWeightsError("w")])
def test_every_user_error_kind_becomes_a_message(error):
    with pytest.raises(SystemExit) as info:
        with user_errors():
            raise error
    assert str(info.value.code).endswith(str(error))


def test_ctrl_c_is_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        with user_errors():
            raise KeyboardInterrupt
    assert info.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def test_evaluate_cli_user_errors(tmp_path, capsys):
    (tmp_path / "config.json").write_text("[1, 2]")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(SystemExit) as info:
        evaluate_main(["--model", str(tmp_path), "--data", "x.csv", "--task", "classification"])
    assert str(info.value.code) == f"error: {tmp_path / 'config.json'}: expected a JSON object, got list"
    with pytest.raises(ValueError, match="expected a JSON object"):
        evaluate_main(["--model", str(tmp_path), "--data", "x.csv", "--task", "classification", "--debug"])
    with pytest.raises(SystemExit) as info:
        evaluate_main(["--model", str(tmp_path), "--data", "x.csv", "--task", "retrieval", "--batch-size", "0"])
    assert info.value.code == 2 and "must be >= 1" in capsys.readouterr().err


def _recipe(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop(DEBUG_ENV, None)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, RECIPE, *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_recipe_process_prints_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfe\x00binary")
    proc = _recipe("--config", str(bad))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"config error: config file '{bad}' is not UTF-8 text (byte 0): is it "
                                                "a YAML config?"]
    # --debug lets the error through with its traceback (checked in this process: an interpreter start is ~8 s)
    from multimodal.config import ConfigError
    from multimodal.tasks import recipe_main

    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        recipe_main(os.path.join(os.path.dirname(RECIPE), "configs", "text_image_classification.yaml"),
                    ["--config", str(bad), "--debug"])
