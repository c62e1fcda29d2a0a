"""multimodal-train: a config, a built-in recipe (shipped as package data) or just a table whose columns are
inferred; user mistakes end with one line."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from multimodal.train import RECIPE_DIR, build_config, list_recipes, main, parser
from multimodal.training.auto import auto_applies

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_the_recipe_configs_ship_in_the_package():
    shipped = sorted(p.name for p in RECIPE_DIR.glob("*.yaml"))
    assert shipped == sorted(os.listdir(os.path.join(ROOT, "recipes", "configs")))  # one source of truth
    recipes = list_recipes()
    assert recipes["text_image_classification"] == "Text-image classification"
    assert recipes["image_text_retrieval"].startswith("Image-text retrieval (two-tower DualEncoder")


def test_list_recipes_and_mistakes(capsys):
    assert main(["--list-recipes"]) == 0
    assert "text_audio_classification  " in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"--recipe 'text_imag_classification' is not a built-in recipe; did you "
                                         r"mean 'text_image_classification'\?"):
        main(["--recipe", "text_imag_classification"])
    with pytest.raises(SystemExit, match="nothing to train: give --config FILE, --recipe NAME"):
        main([])
    with pytest.raises(SystemExit, match="give --config or --recipe, not both"):
        main(["--recipe", "text_image_classification", "--config", "x.yaml"])
    with pytest.raises(SystemExit, match="--data needs --label COLUMN"):
        main(["--data", "t.csv"])
    with pytest.raises(SystemExit, match="unknown config key 'train.epoch'"):
        main(["--recipe", "text_image_classification", "train.epoch=1"])


def test_help_shows_every_default(capsys):
    p = parser()
    with pytest.raises(SystemExit):
        p.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for action in p._actions:
        if action.option_strings and action.default not in (None, argparse.SUPPRESS) and action.help:
            assert f"(default: {action.default})" in text, action.dest


def _args(*argv):
    return parser().parse_args(list(argv))


def _table(folder, n=40, label=lambda i: "day" if i % 2 == 0 else "night"):
    os.makedirs(folder / "img", exist_ok=True)
    rows = []
    for i in range(n):
        day = i % 2 == 0
        Image.fromarray(np.full((16, 16, 3), 210 if day else 30, np.uint8)).save(folder / "img" / f"{i}.png")
        rows.append({"id": f"r{i:03d}", "caption": f"{'a sunny' if day else 'a dark'} scene, number {i}",
                     "photo": f"img/{i}.png", "label": label(i)})
    pd.DataFrame(rows).to_csv(folder / "train.csv", index=False)
    return str(folder / "train.csv")


def test_a_table_picks_the_recipe_defaults_and_the_task(tmp_path):
    data = _table(tmp_path)
    cfg, inference = build_config(_args("--data", data, "--label", "label"))
    assert inference.modalities == ["text", "image"] and cfg.model.task == "single_label"
    assert (cfg.data.text_column, cfg.data.image_column, cfg.data.audio_column) == ("caption", "photo", None)
    assert cfg.data.demo is None and cfg.data.train == data and cfg.data.test is None
    assert set(cfg.model.encoders) == {"text", "image"}  # the recipe's, with measurement choosing the method:
    assert cfg.train.method == "auto" and auto_applies(cfg)
    assert build_config(_args("--data", data, "--label", "label", "train.method=probe"))[0].train.linear_probe
    recipe, _ = build_config(_args("--data", data, "--label", "label", "--recipe", "text_image_classification"))
    assert recipe.train.method is None and recipe.model.freeze_encoders is True  # a named recipe keeps its own
    assert cfg.train.metric_for_best == "macro_f1" and cfg.train.output_dir == os.path.join("outputs", "train")
    regression = _table(tmp_path / "r", label=lambda i: 0.37 * i)
    cfg, inference = build_config(_args("--data", regression, "--label", "label", "--image-column", "none",
                                        "--output", str(tmp_path / "o"), "train.epochs=2"))
    assert cfg.model.task == "regression" and cfg.train.metric_for_best == "auto"
    assert list(cfg.model.encoders) == ["text"] and cfg.data.image_column is None
    assert cfg.train.epochs == 2 and cfg.train.output_dir == str(tmp_path / "o")


@pytest.mark.slow
def test_train_from_a_table_without_yaml(tmp_path, tiny_text_dir, capsys):
    data = _table(tmp_path)
    out = tmp_path / "run"
    assert main(["--data", data, "--label", "label", "--output", str(out), f"model.encoders.text=text:{tiny_text_dir}",
                 "model.encoders.image=image:test_efficientnet", "model.pretrained=false",
                 "model.encoder_kwargs.image.img_size=32", "train.epochs=2", "data.feature_cache=null",
                 "train.log_with=none", "train.progress_bar=false", "eval.baselines=false"]) == 0
    printed = capsys.readouterr().out
    assert f"columns of {data}:" in printed and "photo    image" in printed and "task: single_label" in printed
    saved = yaml.safe_load((out / "config.yaml").read_text())  # the inference is recorded in the run's config
    assert saved["data"]["text_column"] == "caption" and saved["data"]["image_column"] == "photo"
    assert saved["data"]["train"] == data and saved["model"]["task"] == "single_label"
    roles = {r["column"]: r["role"] for r in json.loads((out / "inferred_columns.json").read_text())["roles"]}
    assert roles == {"label": "label", "id": "ignored", "caption": "text", "photo": "image"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split_sizes"]["test"] == 4 and any("carved" in n for n in metrics["split_notes"])
    assert metrics["labels"] == ["day", "night"] and (out / "model" / "model.safetensors").exists()
    assert metrics["method_selection"]["chosen"] in ("probe", "head")  # auto, on 20 training rows
