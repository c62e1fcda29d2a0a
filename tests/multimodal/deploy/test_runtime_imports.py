"""The exported-model runtime imports no torch, accelerate or transformers model code, and runs an exported folder
in a process where those cannot be imported at all; the deploy names that moved still work, with a warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from multimodal.deploy.runtime import ExportedModel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
HEAVY = ("torch", "torchaudio", "torchvision", "accelerate", "timm", "transformers.models", "transformers.modeling_utils")

# Makes the heavy packages unimportable, as in an environment where only the runtime's dependencies are installed.
BLOCKER = """
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchaudio", "torchvision", "accelerate", "timm", "transformers"):
            raise ImportError(f"{name} is not installed here")
        return None
sys.meta_path.insert(0, Blocked())
"""


def _run(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_importing_the_runtime_loads_no_torch_accelerate_or_transformers_models():
    out = _run("import sys, json, multimodal.deploy.runtime, encoders.samples\n"
               "print(json.dumps(sorted(sys.modules)))")
    loaded = json.loads(out.strip().splitlines()[-1])
    heavy = [m for m in loaded if m.startswith(HEAVY)]
    assert heavy == []
    assert "multimodal.deploy.runtime.model" in loaded and "onnxruntime" not in loaded  # ORT loads with a model


def _rows():
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8))
    return {"text": ["a small ant", None], "image": [image, image.convert("L")],
            "audio": [(rng.standard_normal(9000).astype(np.float32), 44100), None]}


def test_an_exported_folder_predicts_where_torch_cannot_be_imported(fused_onnx, tmp_path):
    model = ExportedModel(fused_onnx)
    rows = _rows()
    inputs = {m: model.preprocess(m, v) for m, v in rows.items()}
    present = {m: [s is not None for s in v] for m, v in rows.items()}
    expected = model.logits(inputs, present)
    np.save(tmp_path / "audio.npy", rows["audio"][0][0])
    rows["image"][0].save(tmp_path / "image.png")
    code = BLOCKER + f"""
import numpy as np
from PIL import Image
from multimodal.deploy.runtime import ExportedModel, format_logits
model = ExportedModel({fused_onnx!r})
image = Image.open({str(tmp_path / 'image.png')!r})
rows = {{"text": ["a small ant", None], "image": [image, image.convert("L")],
        "audio": [(np.load({str(tmp_path / 'audio.npy')!r}), 44100), None]}}
inputs = {{m: model.preprocess(m, v) for m, v in rows.items()}}
present = {{m: [s is not None for s in v] for m, v in rows.items()}}
logits = model.logits(inputs, present)
np.save({str(tmp_path / 'logits.npy')!r}, logits)
print(format_logits(logits, model.task, model.labels)[0]["label"])
"""
    label = _run(code).strip().splitlines()[-1]
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected, atol=1e-6)
    assert label in model.labels


def test_the_blocker_really_blocks():
    """The guard of the test above fails an import of torch (so the test cannot pass by accident)."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-c", BLOCKER + "import multimodal.deploy.predictor"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode != 0 and "torch is not installed here" in proc.stderr


@pytest.mark.parametrize("old,name,new", [
    ("multimodal.deploy.common", "DeployError", "multimodal.deploy.errors.DeployError"),
    ("multimodal.deploy.common", "format_logits", "multimodal.deploy.runtime.outputs.format_logits"),
    ("multimodal.deploy.common", "staged_folder", "multimodal.deploy.runtime.folder.staged_folder"),
    ("multimodal.deploy.probes", "probe_batches", "multimodal.deploy.example_inputs.example_batches"),
    ("multimodal.deploy.preprocess", "ImagePreprocessor", "multimodal.deploy.runtime.preprocess.NumpyImagePreprocessor"),
    ("multimodal.deploy.preprocess", "build_preprocessor", "multimodal.deploy.runtime.preprocess.build_preprocessor"),
    ("multimodal.deploy.loading", "read_deploy_config", "multimodal.deploy.runtime.folder.read_deploy_config"),
])
def test_moved_deploy_names_still_work_and_warn(old, name, new):
    import importlib

    module = importlib.import_module(old)
    new_module, new_name = new.rsplit(".", 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new_module), new_name)
    assert [w.category for w in caught] == [DeprecationWarning] and new in str(caught[0].message)
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018
