"""Federated fine-tuning: partitions, exchanged tensors, FedProx, clients training through the Trainer's loop
(layer decay, the schedule across rounds), options a client cannot honour refused, and a real SuperLink +
2 SuperNodes run."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from multimodal import get_task, load_config, load_model
from multimodal.data import DataError
from multimodal.regimes.federated import (
    exchanged_names,
    get_arrays,
    local_train,
    main,
    partition_rows,
    set_arrays,
)
from multimodal.tasks import build_loaders
from multimodal.training.schedule import lr_multiplier


def test_partitions():
    labels = ["a"] * 30 + ["b"] * 10
    iid = partition_rows(40, 3, "iid", seed=1)
    assert sorted(sum(iid, [])) == list(range(40)) and [len(p) for p in iid] == [14, 13, 13]
    skew = partition_rows(40, 4, "label_skew", labels, seed=1)
    assert sorted(sum(skew, [])) == list(range(40)) and all(skew)
    mixes = [sum(labels[i] == "a" for i in p) / len(p) for p in skew]
    assert max(mixes) - min(mixes) > 0.3  # clients see different label mixes
    sites = [f"site{i % 5}" for i in range(40)]
    by_site = partition_rows(40, 2, "by_column:site", column=sites, seed=0)
    for part in by_site:  # a site's rows never straddle clients
        assert not {sites[i] for i in part} & {sites[i] for i in sum(by_site, []) if i not in part}
    with pytest.raises(DataError, match="2 distinct values for 3 clients"):
        partition_rows(40, 3, "by_column:x", column=["p", "q"] * 20)
    with pytest.raises(DataError, match="choose one of iid, label_skew"):
        partition_rows(40, 2, "shuffled")


def _write(tmp_path, tiny_text_dir, n=40, freeze="true") -> str:
    os.makedirs(tmp_path / "img", exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        day = i % 2 == 0
        pixels = np.clip((200 if day else 40) + rng.normal(0, 40, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / "img" / f"{i}.png")
        rows.append({"text": f"scene {i} {'sunny' if day and i % 3 else 'dim'}", "image": f"img/{i}.png",
                     "label": "day" if day else "night", "site": f"s{i % 4}"})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    cfg = {"data": {"train": str(tmp_path / "m.csv"), "audio_column": None, "num_workers": 0, "val_fraction": 0.25,
                    "test_fraction": 0.0, "feature_cache": str(tmp_path / "cache"),
                    "feature_cache_precision": "fp32"},  # exact comparisons below: fp32 features, not bf16,
           "model": {"encoders": {"text": f"text:{tiny_text_dir}", "image": "image:test_efficientnet"},
                     "encoder_kwargs": {"image": {"img_size": 32}}, "pretrained": False, "fusion_dim": 16,
                     "freeze_encoders": yaml.safe_load(freeze)},
           "train": {"output_dir": str(tmp_path / "out"), "batch_size": 8, "head_lr": 0.01, "log_with": "none",
                     "progress_bar": False}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return str(tmp_path / "cfg.yaml")


def test_exchanged_tensors_and_fedprox(tmp_path, tiny_text_dir):
    cfg = load_config(_write(tmp_path, tiny_text_dir, freeze="[image]"), ["data.feature_cache=null"])
    task = get_task(cfg.model.task)(cfg)
    splits = task.build_splits(progress=False)
    model = task.build_model(splits)
    names = exchanged_names(model)
    assert not any(n.startswith("encoders.image.") for n in names)  # a frozen tower never travels
    assert any(n.startswith("encoders.text.") for n in names) and "head.net.1.weight" in names
    start = get_arrays(model, names)
    loader = build_loaders(task, model, splits, progress=False)["train"]

    def drift(mu: float) -> float:
        set_arrays(model, names, start)
        local_train(model, loader, cfg.train, 2, mu, seed=0)
        return float(sum(np.square(a - b).sum() for a, b in zip(get_arrays(model, names), start)))

    free, held = drift(0.0), drift(50.0)
    assert 0 < held < 0.8 * free  # the proximal term keeps the client near the global model
    with pytest.raises(ValueError, match="shape"):
        set_arrays(model, names, [np.zeros(1)] * len(names))


def test_clients_train_through_the_trainer_loop(tmp_path, tiny_text_dir):
    cfg = load_config(_write(tmp_path, tiny_text_dir, freeze="[image]"),
                      ["data.feature_cache=null", "train.scheduler=constant", "train.warmup_steps=0"])
    task = get_task(cfg.model.task)(cfg)
    splits = task.build_splits(progress=False)
    model = task.build_model(splits)
    names = exchanged_names(model)
    start = get_arrays(model, names)
    loader = build_loaders(task, model, splits, progress=False)["train"]

    def moved(prefix: str, **train) -> float:
        set_arrays(model, names, start)
        local_train(model, loader, dataclasses.replace(cfg.train, **train), 1, seed=0)
        now = get_arrays(model, names)
        return float(sum(np.abs(a - b).sum() for n, a, b in zip(names, now, start) if n.startswith(prefix)))

    embeddings = "encoders.text.backbone.embeddings."
    # layer decay: the embeddings sit two layer groups below the top, so 1e-3 decay scales their LR by 1e-6
    assert moved(embeddings, layer_decay=1e-3) < 1e-2 * moved(embeddings)
    # the schedule: a warmup far longer than the round keeps the LR near 0
    assert moved("head.", warmup_steps=1000) < 0.05 * moved("head.")
    # round 2 of 2 continues the cosine schedule where round 1 ended (half way), and ends it at 0
    cosine = dataclasses.replace(cfg.train, scheduler="cosine")
    steps = len(loader)
    first = local_train(model, loader, cosine, 1, seed=0, server_round=1, rounds=2)
    second = local_train(model, loader, cosine, 1, seed=0, server_round=2, rounds=2)
    assert first["lr"] == pytest.approx(cfg.train.head_lr * lr_multiplier("cosine", 0, 2 * steps)(steps)) == 0.005
    assert second["lr"] == pytest.approx(0.0, abs=1e-12) and np.isfinite(second["train_loss"])


def test_options_a_client_cannot_honour_are_refused_at_load(tmp_path, tiny_text_dir):
    config = _write(tmp_path, tiny_text_dir)
    with pytest.raises(SystemExit, match=r"federated training cannot apply train.early_stopping_patience .*"
                                         r"train.ema_decay .*model.unfreeze_after_epochs"):
        main(["--config", config, "--no-centralized", "train.ema_decay=0.9", "train.early_stopping_patience=2",
              "model.unfreeze_after_epochs=1"])
    assert not os.path.exists(tmp_path / "out" / "federated" / "clients")  # refused before any manifest


@pytest.mark.slow
def test_federate_cli_on_a_local_superlink(tmp_path, tiny_text_dir, capsys):
    config = _write(tmp_path, tiny_text_dir)
    with pytest.raises(SystemExit, match="column 'hospital' not in the training rows"):
        main(["--config", config, "--partition", "by_column:hospital"])
    out = tmp_path / "fed"
    assert main(["--config", config, "--clients", "2", "--rounds", "2", "--partition", "by_column:site",
                 "--strategy", "fedprox", "--proximal-mu", "0.01", "--output", str(out)]) == 0
    result = json.load(open(out / "federated.json"))
    assert result["strategy"] == "fedprox" and result["clients"] == 2 and len(result["rounds"]) == 2
    assert result["initial"]["round"] == 0 and sum(result["client_sizes"]) == 30
    assert all(0 <= r["accuracy"] <= 1 and r["num_examples"] == 10 for r in result["rounds"])
    assert not any(n.startswith("encoders.") for n in result["exchanged_names"])
    assert result["exchanged_values"] < result["model_values"] / 10
    assert [r["round"] for r in result["per_round"]] == [1, 2] and result["centralized_best"] is not None
    sites = [set(pd.read_csv(out / "clients" / f"client-{i}.csv")["site"]) for i in (0, 1)]
    assert not sites[0] & sites[1]  # each hospital's rows stay on one client
    # the aggregate the server reports is the model it saved: re-scoring it reproduces round 2
    from multimodal.evaluation.cli import main as evaluate

    assert evaluate(["--model", str(out / "model"), "--data", str(out / "server" / "validation.csv"),
                     "--task", "classification", "--output", str(tmp_path / "eval")]) == 0
    again = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert again["accuracy"] == pytest.approx(result["rounds"][-1]["accuracy"])
    assert again["loss"] == pytest.approx(result["rounds"][-1]["loss"], rel=1e-4)
    assert load_model(out / "model").head is not None
    assert "first round at 95%" in capsys.readouterr().out
