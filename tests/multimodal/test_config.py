"""Config loading: YAML + dotted overrides, validation errors that name the key, round trip."""

from __future__ import annotations

import pytest
import yaml

from multimodal.config import ConfigError, ExperimentConfig, load_config, parse_overrides, save_config


def _write(tmp_path, data) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_yaml_and_overrides_typed(tmp_path):
    path = _write(
        tmp_path,
        {"train": {"epochs": 5, "head_lr": 0.01}, "model": {"fusion": "concat", "encoders": {"text": "text:x"}}},
    )
    cfg = load_config(
        path,
        ["train.epochs=3", "model.fusion=gated", "train.max_grad_norm=null", "eval.recall_at=[1, 3]",
         "model.encoders.audio=audio-mel:test_efficientnet", "model.encoder_kwargs.image={img_size: 32}",
         "train.head_lr=1"],
    )
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.train.epochs == 3 and cfg.model.fusion == "gated"
    assert cfg.train.max_grad_norm is None
    assert cfg.eval.recall_at == [1, 3]
    assert cfg.model.encoders["audio"] == "audio-mel:test_efficientnet"
    assert cfg.model.encoders["text"] == "text:x"  # overrides merge into the YAML's mapping
    assert cfg.model.encoder_kwargs == {"image": {"img_size": 32}}
    assert cfg.train.head_lr == 1.0 and isinstance(cfg.train.head_lr, float)  # int accepted for float


def test_unknown_key_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.epoch.*did you mean 'train\.epochs'"):
        load_config(None, ["train.epoch=3"])
    path = _write(tmp_path, {"trian": {"epochs": 1}})
    with pytest.raises(ConfigError, match="'trian'.*did you mean 'train'"):
        load_config(path)


def test_bad_type_and_choice_name_the_key():
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer.*'three'"):
        load_config(None, ["train.epochs=three"])
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer"):
        load_config(None, ["train.epochs=2.5"])
    with pytest.raises(ConfigError, match=r"data\.stratify: expected true/false"):
        load_config(None, ["data.stratify=3"])
    with pytest.raises(ConfigError, match=r"model\.fusion: invalid choice 'gatd'.*did you mean 'gated'"):
        load_config(None, ["model.fusion=gatd"])
    with pytest.raises(ConfigError, match=r"train\.mixed_precision: invalid choice"):
        load_config(None, ["train.mixed_precision=fp8"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.epochs"])


def test_resolved_config_round_trip(tmp_path):
    cfg = load_config(None, ["train.epochs=7", "data.on_bad_sample=skip", "model.head_hidden_dim=64"])
    out = tmp_path / "resolved.yaml"
    save_config(cfg, str(out))
    again = load_config(str(out))
    assert again == cfg


def test_recipe_configs_are_valid():
    import os

    root = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "configs")
    for name in ("text_image_classification.yaml", "text_audio_classification.yaml"):
        cfg = load_config(os.path.join(root, name))
        assert cfg.data.demo is not None and cfg.eval.baselines
