"""A model folder is checked before its weights are trusted: NaN/inf weights and unknown dtypes are refused naming the
tensor, widths in a config that do not fit the weights are refused before the model is built (no gigabytes
allocated), and every file of the folder that does not parse is named (labels.json, tokenizer.json)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from multimodal import load_model
from multimodal.deploy.errors import DeployError
from multimodal.deploy.loading import load_source_model
from multimodal.models import ModelFolderError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture
def copy(saved, tmp_path) -> str:
    folder = str(tmp_path / "copy")
    shutil.copytree(saved, folder)
    return folder


def _rewrite_weights(folder: str, change) -> None:
    path = os.path.join(folder, "model.safetensors")
    state = load_file(path)
    change(state)
    save_file(state, path)


def test_nan_weights_are_refused_naming_the_tensor(copy):
    _rewrite_weights(copy, lambda s: s["head.net.1.weight"].__setitem__((0, 0), float("nan")))
    with pytest.raises(ModelFolderError, match=r"model.safetensors: tensor 'head.net.1.weight' holds NaN or inf"):
        load_model(copy)


def test_an_unknown_dtype_is_refused_naming_the_tensor(copy):
    def to_fp8(state):
        state["head.net.1.bias"] = state["head.net.1.bias"].to(torch.float8_e4m3fn)

    _rewrite_weights(copy, to_fp8)
    with pytest.raises(ModelFolderError, match=r"tensor 'head.net.1.bias' has dtype F8_E4M3"):
        load_model(copy)


def test_a_width_that_does_not_fit_the_weights_is_refused_before_anything_is_built(copy):
    """The text encoder's config says 16,384 wide (about 25 GB of weights); the weights are 32 wide. The load runs
    in a process that may not allocate 2 GB, so building the model first would fail differently."""
    path = os.path.join(copy, "encoders", "text", "config.json")
    config = json.load(open(path))
    config.update(hidden_size=16384, intermediate_size=65536)
    json.dump(config, open(path, "w"))
    code = ("import resource, sys\n"
            "from multimodal.models import ModelFolderError, load_model\n"
            "import torch\n"
            "soft = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024 + 2 * 2**30\n"
            "resource.setrlimit(resource.RLIMIT_AS, (soft, resource.RLIM_INFINITY))\n"
            "try:\n    load_model(sys.argv[1])\nexcept ModelFolderError as err:\n    print(err)\n")
    proc = subprocess.run([sys.executable, "-c", code, copy], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "model.safetensors: tensor 'encoders.text.backbone.embeddings" in proc.stdout, proc.stdout
    assert "does not match the architecture in" in proc.stdout and "refused before building it" in proc.stdout


def test_a_deeply_nested_labels_json_is_named(copy):
    with open(os.path.join(copy, "labels.json"), "w") as f:
        f.write("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelFolderError, match=r"labels.json: JSON nested too deeply"):
        load_model(copy)
    with open(os.path.join(copy, "labels.json"), "w") as f:
        json.dump({"labels": [["a", ["b"]], "c"]}, f)
    with pytest.raises(DeployError, match=r"labels.json: 'labels' must be a list of class names"):
        load_source_model(copy)


@pytest.mark.parametrize("damage", ["truncated", "not a tokenizer"])
def test_a_damaged_tokenizer_file_is_named(copy, damage):
    path = os.path.join(copy, "encoders", "text", "tokenizer.json")
    if damage == "truncated":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 3)
        expected = r"encoders/text/tokenizer.json: invalid JSON"
    else:
        json.dump({"version": "1.0", "model": {"type": "Nonsense"}}, open(path, "w"))
        expected = r"encoders/text/tokenizer.json: not a tokenizer file"
    with pytest.raises(ModelFolderError, match=expected):
        load_model(copy)


def test_an_intact_folder_still_loads_the_same_weights(saved):
    model = load_model(saved)
    state = load_file(os.path.join(saved, "model.safetensors"))
    assert torch.equal(model.state_dict()["head.net.1.weight"], state["head.net.1.weight"])
