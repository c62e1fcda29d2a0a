"""train.method: the key's mapping onto the switches, method auto's selection and budget, the Trainer's budget stop."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from multimodal import MultimodalModel, run
from multimodal.config import ConfigError, load_config
from multimodal.training import auto
from tests.multimodal.training.test_probe import _overrides


def _auto(tmp_path, *extra) -> list[str]:
    base = [o for o in _overrides(tmp_path, "train.epochs=1", "train.probe_cs=[0.01, 1.0]")
            if o not in ("train.linear_probe=true", "model.freeze_encoders=true")]
    return [*base, "train.method=auto", *extra]


def test_method_maps_onto_the_switches(tmp_path):
    base = [o for o in _overrides(tmp_path) if o not in ("train.linear_probe=true", "model.freeze_encoders=true")]
    probe = load_config(None, [*base, "train.method=probe"])
    assert probe.train.linear_probe and probe.model.freeze_encoders is True
    head = load_config(None, [*base, "train.method=head"])
    assert not head.train.linear_probe and head.model.freeze_encoders is True and head.model.peft is None
    lora = load_config(None, [*base, "train.method=lora"])
    assert lora.model.peft is not None and lora.model.peft.r == 8 and lora.model.freeze_encoders is False
    blocks = load_config(None, [*base, "train.method=last_blocks"])
    assert blocks.model.unlock_last_blocks == {"image": 2}
    full = load_config(None, [*base, "train.method=full", "model.freeze_encoders=true"])  # the method wins
    assert full.model.freeze_encoders is False and not full.train.linear_probe
    # the frozen methods pool every backbone stage, unless the encoder's kwargs say otherwise; trained ones do not
    assert probe.model.encoder_kwargs["image"] == head.model.encoder_kwargs["image"] == {"img_size": 32,
                                                                                         "pool_stages": "all"}
    assert all("pool_stages" not in c.model.encoder_kwargs["image"] for c in (lora, blocks, full))
    own = load_config(None, [*base, "train.method=probe", "model.encoder_kwargs={image: {pool_stages: []}}"])
    assert own.model.encoder_kwargs["image"] == {"pool_stages": []}
    text = load_config(None, [*base, "train.method=probe", "data.text_column=text", "model.encoder_kwargs={}",
                              "model.encoders={text: 'text:prajjwal1/bert-tiny', image: 'image:test_efficientnet'}"])
    assert text.model.encoder_kwargs == {"image": {"pool_stages": "all"}}  # a text encoder takes no pool_stages
    assert load_config(None, base).train.method is None  # null: the switches decide, as before
    with pytest.raises(ConfigError, match="train.method"):
        load_config(None, [*base, "train.method=lorra"])
    with pytest.raises(ConfigError, match="train.method=auto selects"):
        load_config(None, [*base, "train.method=auto", "model.task=retrieval", "data.text_column=text",
                                 "model.encoders.text=text:prajjwal1/bert-tiny"])
    with pytest.raises(ConfigError, match="train.resume_from: a train.method=auto run saves no checkpoints"):
        load_config(None, [*base, "train.method=auto", "train.resume_from=latest"])


def test_auto_runs_every_candidate_and_keeps_the_best_on_validation(tmp_path, monkeypatch):
    monkeypatch.setattr(auto, "MIN_TRAIN_ROWS", dict.fromkeys(auto.MIN_TRAIN_ROWS, 0))  # tiny data: let all run
    monkeypatch.setattr(auto, "METHODS", ("probe", "head", "full"))  # (lora and last blocks train as full does)
    metrics = run(load_config(None, _auto(tmp_path, "train.time_budget_s=3000")))
    sel = metrics["method_selection"]
    rows = {c["method"]: c for c in sel["candidates"]}
    assert list(rows) == ["probe", "head", "full"]
    assert all(c["status"] == "ran" and c["seconds"] > 0 for c in rows.values())
    key = "validation macro_f1"
    assert rows[sel["chosen"]][key] >= rows["probe"][key]  # the rules themselves: the test below
    assert metrics["test"]["accuracy"] >= 0.8
    assert MultimodalModel.from_pretrained(tmp_path / "out" / "model") is not None
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["method_selection"]["chosen"] == sel["chosen"]
    assert "Method selection" in (tmp_path / "out" / "report.md").read_text()
    assert not list((tmp_path / "out").rglob("checkpoints"))  # a selection is not resumable: no optimizer state


def test_auto_skips_what_the_data_or_budget_does_not_allow(tmp_path, monkeypatch):
    monkeypatch.setattr(auto, "MIN_TRAIN_ROWS", {**auto.MIN_TRAIN_ROWS, "lora": 0, "last_blocks": 0, "full": 10**6})
    monkeypatch.setattr(auto, "step_seconds", lambda *a, **k: (50.0, 10))  # an epoch of encoder training: 500 s
    metrics = run(load_config(None, _auto(tmp_path, "train.time_budget_s=120")))
    rows = {c["method"]: c for c in metrics["method_selection"]["candidates"]}
    assert rows["probe"]["status"] == rows["head"]["status"] == "ran"
    assert rows["lora"]["status"].startswith("skipped: estimated 500s") and rows["lora"]["estimate_s"] == 500
    assert rows["full"]["status"].startswith("skipped: 36 training rows")
    assert metrics["method_selection"]["chosen"] in ("probe", "head")


def test_auto_leaves_a_method_chosen_by_the_switches_alone(tmp_path):
    metrics = run(load_config(None, [*_auto(tmp_path), "train.linear_probe=true", "model.freeze_encoders=true"]))
    assert "method_selection" not in metrics and "probe" in metrics


def test_time_budget_stops_a_plain_run_between_epochs(tmp_path):
    base = [o for o in _overrides(tmp_path) if o != "train.linear_probe=true"]
    metrics = run(load_config(None, [*base, "train.epochs=4", "train.time_budget_s=0.001"]))
    assert metrics["epochs_run"] == 1 and "train.time_budget_s=0.001" in metrics["budget_stop"]


class _FakeTask:
    """A task whose runs `_fake_train` fakes: the selection logic alone, in milliseconds."""

    label_type, uses_fusion = "single_label", True

    def __init__(self, cfg):
        self.cfg = cfg

    def metric_mode(self, metric):
        return "max"


ALL = ("probe", "head", "lora", "last_blocks", "full")


@pytest.mark.parametrize("scores, chosen", [
    # lora and last_blocks tie at a saturated 1.0 (no noise margin there): the lower validation loss wins
    ({"probe": (0.8, 0.5), "head": (0.7, 0.3), "lora": (1.0, 0.6), "last_blocks": (1.0, 0.4), "full": (0.9, 0.1)},
     "last_blocks"),
    # every method ties on accuracy and loss: the cheapest, the probe (refitted on train + validation)
    (dict.fromkeys(ALL, (1.0, 0.2)), "probe"),
    # the probe is best: auto keeps it, never a method below it on validation
    ({"probe": (0.9, 0.9), "head": (0.8, 0.1), "lora": (0.7, 0.1), "last_blocks": (0.89, 0.1), "full": (0.5, 0.1)},
     "probe"),
    # the head is 3 points up on 100 rows, within one standard error of 0.8 (4 points): the probe stays
    ({"probe": (0.8, 0.5), "head": (0.83, 0.1), "lora": (0.7, 0.1), "last_blocks": (0.7, 0.1), "full": (0.7, 0.1)},
     "probe"),
    # 5 points up is beyond it: the head; lora then needs > 0.85 + sqrt(0.85 * 0.15 / 100) = 0.886
    ({"probe": (0.8, 0.5), "head": (0.85, 0.6), "lora": (0.88, 0.1), "last_blocks": (0.7, 0.1), "full": (0.7, 0.1)},
     "head"),
])
def test_selection_rules_best_score_then_lower_loss_then_cheaper(tmp_path, monkeypatch, scores, chosen):
    calls = []

    def fake_train(task, splits, out, main):
        method = task.cfg.train.method + ("-refit" if task.cfg.train.refit_full else "")
        calls.append(method)
        os.makedirs(os.path.join(out, "model"))
        with open(os.path.join(out, "model", "weights"), "w") as f:
            f.write(method)
        accuracy, loss = scores[task.cfg.train.method]
        return {"metric_for_best": "accuracy", "validation": {"accuracy": accuracy, "loss": loss}}, {}

    monkeypatch.setattr(auto, "step_seconds", lambda *a, **k: (0.001, 1))
    cfg = load_config(None, _auto(tmp_path))
    splits = SimpleNamespace(train=[0] * 1000, validation=[0] * 100)
    result, _ = auto.select_method(_FakeTask(cfg), splits, str(tmp_path / "run"), fake_train, None, lambda s: None)
    sel = result["method_selection"]
    assert [c["status"] for c in sel["candidates"]] == ["ran"] * 5 and calls[:5] == list(scores)
    assert sel["chosen"] == chosen
    assert scores[chosen][0] >= scores["probe"][0]
    kept = "probe-refit" if chosen == "probe" else chosen
    assert (tmp_path / "run" / "model" / "weights").read_text() == kept and sel["refit"] == (chosen == "probe")
    assert not list((tmp_path / "run" / "candidates").glob("*/model"))  # the losers' weights are deleted
