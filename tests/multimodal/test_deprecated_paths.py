"""Old import paths of moved modules and names keep working for one release, each with a DeprecationWarning that
names the new home; the console scripts and the Flower app point to the new homes."""

from __future__ import annotations

import importlib
import os

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

MOVED = [
    ("multimodal.usererrors", "user_errors", "multimodal.errors", None),
    ("multimodal.utils", "to_device", "multimodal.data.batches", None),
    ("multimodal.utils", "write_json", "multimodal.files", None),
    ("multimodal.utils", "deep_merge", "multimodal.config.merge", None),
    ("multimodal.utils", "process_state", "multimodal.training.accelerator", None),
    ("multimodal.federated", "local_train", "multimodal.regimes.federated", None),
    ("multimodal.federated_app", "client", "multimodal.regimes.federated_app", None),
    ("multimodal.continual", "run_continual", "multimodal.regimes.continual", None),
    ("multimodal.training.state", "TrainerState", "multimodal.training.trainer_state", None),
    ("multimodal.training.state", "make_accelerator", "multimodal.training.accelerator", None),
    ("multimodal.training.state", "NonFiniteLossError", "multimodal.training.integrity", None),
    ("multimodal.training.state", "lr_lambda", "multimodal.training.schedule", "lr_multiplier"),
    ("multimodal.training", "lr_lambda", "multimodal.training.schedule", "lr_multiplier"),
    ("multimodal.training.optim", "layer_decay_groups", "multimodal.models.param_groups", "param_groups"),
    ("multimodal.tasks.outputs", "prepare_output_dir", "multimodal.tasks.run_folder", None),
    ("multimodal.tasks.finetune", "prepare_model", "multimodal.training.methods", None),
    ("multimodal.tasks.probe", "fit_logistic", "multimodal.training.probe", None),
]


@pytest.mark.parametrize(("old", "name", "new", "new_name"), MOVED)
def test_old_path_still_works_and_warns(old, name, new, new_name):
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), new_name or name)


def test_to_device_stays_on_the_package_without_a_warning(recwarn):
    import multimodal
    from multimodal.data.batches import to_device

    assert multimodal.to_device is to_device
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]


def test_console_scripts_and_the_flower_app_point_to_the_regimes_package():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    with open(os.path.join(ROOT, "multimodal", "regimes", "flower_app", "pyproject.toml"), "rb") as f:
        components = tomllib.load(f)["tool"]["flwr"]["app"]["components"]
    targets = {"multimodal-federate": scripts["multimodal-federate"], "multimodal-continual": scripts["multimodal-continual"],
               **components}
    for what, target in targets.items():
        module, _, attr = target.partition(":")
        assert module.startswith("multimodal.regimes."), what
        assert getattr(importlib.import_module(module), attr) is not None, what
