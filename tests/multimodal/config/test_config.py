"""Config loading: YAML + dotted overrides, layered task/demo defaults, registry checks naming the key, round trip."""

from __future__ import annotations

import os

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
         "model.encoders.audio=audio-mel:test_efficientnet", "model.encoder_kwargs.audio={max_seconds: 2}",
         "train.head_lr=1"],
    )
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.train.epochs == 3 and cfg.model.fusion == "gated"
    assert cfg.train.max_grad_norm is None
    assert cfg.eval.recall_at == [1, 3]
    assert cfg.model.encoders["audio"] == "audio-mel:test_efficientnet"
    assert cfg.model.encoders["text"] == "text:x"  # overrides merge into the YAML's mapping
    assert cfg.model.encoder_kwargs == {"audio": {"max_seconds": 2}}
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
    with pytest.raises(ConfigError, match=r"model\.fusion: unknown fusion 'gatd' \(did you mean 'gated'\?\)"):
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
    root = os.path.join(os.path.dirname(__file__), "..", "..", "..", "recipes", "configs")
    names = sorted(os.listdir(root))
    assert {"text_image_classification.yaml", "text_audio_classification.yaml", "image_text_retrieval.yaml",
            "audio_text_retrieval.yaml", "image_audio_retrieval.yaml", "few_shot_classification.yaml",
            "multitask_text_image.yaml"} <= set(names)
    for name in names:
        cfg = load_config(os.path.join(root, name))
        assert cfg.data.demo is not None
        if not name.endswith("_finetune.yaml"):
            assert cfg.eval.baselines == cfg.model.task.endswith("label")


def test_values_are_checked_against_the_registries():
    with pytest.raises(ConfigError, match=r"model\.task: unknown task 'retrival' \(did you mean 'retrieval'\?\)"):
        load_config(None, ["model.task=retrival"])
    with pytest.raises(ConfigError, match=r"model\.encoders\.image: unknown encoder kind 'imag'"):
        load_config(None, ["model.encoders.image=imag:resnet18"])
    with pytest.raises(ConfigError, match=r"data\.demo: unknown demo 'text_imag' \(did you mean 'text_image'\?\)"):
        load_config(None, ["data.demo=text_imag"])
    with pytest.raises(ConfigError, match=r"model\.freeze_encoders names \['audio'\]"):
        load_config(None, ["model.freeze_encoders=[audio]"])
    with pytest.raises(ConfigError, match=r"train\.metric_for_best: 'macro_f' .*did you mean 'macro_f1'"):
        load_config(None, ["train.metric_for_best=macro_f"])
    with pytest.raises(ConfigError, match=r"train\.metric_for_best: 'macro_f1' is not a validation metric of task 'retrieval'"):
        load_config(None, ["model.task=retrieval", "train.metric_for_best=macro_f1"])
    with pytest.raises(ConfigError, match="aligns two or more towers"):
        load_config(None, ["model.task=retrieval", "model.encoders={text: 'text:x'}"])
    with pytest.raises(ConfigError, match="must be < 1"):
        load_config(None, ["data.val_fraction=0.5", "data.test_fraction=0.5"])
    # the retrieval task does not use a fusion: any value there is ignored, not rejected
    assert load_config(None, ["model.task=retrieval", "model.fusion=whatever"]).model.task == "retrieval"
    # 'contrastive' still selects the retrieval task
    assert load_config(None, ["model.task=contrastive"]).model.freeze_encoders is True


def test_task_and_demo_defaults_sit_under_the_users_values(tmp_path):
    base = load_config(None)
    assert base.model.freeze_encoders is False and base.train.epochs == 3  # dataclass defaults
    retrieval = load_config(None, ["model.task=retrieval"])
    assert retrieval.model.freeze_encoders is True and retrieval.train.epochs == 20  # the task's defaults
    assert load_config(None, ["model.task=retrieval", "model.freeze_encoders=false"]).model.freeze_encoders is False
    demo = load_config(None, ["data.demo=text_audio", "model.encoders={text: 'text:x', audio: 'audio-mel:y'}"])
    assert demo.model.encoder_kwargs == {"audio": {"max_seconds": 1.0}}  # the demo's clip length
    mine = load_config(None, ["data.demo=text_audio", "model.encoders={text: 'text:x', audio: 'audio-mel:y'}",
                              "model.encoder_kwargs.audio.max_seconds=3.0"])
    assert mine.model.encoder_kwargs == {"audio": {"max_seconds": 3.0}}
    # the demo's options only reach the modalities the model has, and a user's own data gets none of them
    assert load_config(None, ["data.demo=text_audio"]).model.encoder_kwargs == {}
    (tmp_path / "x.csv").write_text("text,image,label\n")
    assert load_config(None, [f"data.train={tmp_path / 'x.csv'}"]).model.encoder_kwargs == {}


def test_user_registered_task_and_fusion_pass_the_checks():
    from fusion import Fusion, register_fusion
    from multimodal import Task, register_task

    class EchoTask(Task):
        """A test task."""

    register_task("test_echo_task", EchoTask)
    register_fusion("test_config_fusion", "a test fusion")(type("TestConfigFusion", (Fusion,), {}))
    cfg = load_config(None, ["model.task=test_echo_task", "model.fusion=test_config_fusion"])
    assert cfg.model.task == "test_echo_task"


def test_unreadable_config_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml.*not valid YAML"):
        load_config(str(bad))
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml.*mapping"):
        load_config(str(listing))


RECIPE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "recipes", "configs", "text_image_classification.yaml")


def test_dropping_a_tower_is_one_override():
    # Regression: model.encoders='{image: ...}' merged into the recipe's mapping (the text tower stayed) and
    # model.encoders.text=null was refused as "expected a string".
    image = "image:tf_efficientnet_lite0"
    for override in ("model.encoders.text=null", f"model.encoders={{image: '{image}'}}"):
        cfg = load_config(RECIPE, [override])
        assert cfg.model.encoders == {"image": image}, override
    # a dotted entry still merges; a mapping override replaces only the mapping it names
    cfg = load_config(RECIPE, ["model.encoders.text=text:prajjwal1/bert-tiny", "model.encoder_kwargs={image: {img_size: 32}}"])
    assert cfg.model.encoders == {"text": "text:prajjwal1/bert-tiny", "image": image}
    assert cfg.model.encoder_kwargs == {"image": {"img_size": 32}} and cfg.model.fusion == "concat"
    assert parse_overrides(["model.encoders={image: x}"]) == {"model": {"encoders": {"image": "x"}}}
