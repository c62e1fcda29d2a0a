"""Tasks declare what they need as attributes: a user task's label type comes from its class, not the name it
is registered under, and a user fusion that reads tokens gets them (with their widths), not only 'attention'."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fusion.registry
import multimodal.registry
from encoders import masked_mean
from fusion import Fusion, register_fusion
from fusion.base import zero_absent
from multimodal import ClassificationTask, get_task, load_config, load_model, register_task, run
from multimodal.config import ConfigError
from multimodal.tasks.base import build_fusion, create_encoders
from multimodal.tasks.classification import MultiLabelTask, RegressionTask


class TokenMean(Fusion):
    """Masked mean of each modality's tokens, projected and summed over the present modalities."""

    requires_tokens = True
    seen: list[tuple[str, int]] = []  # (modality, token width) of every batch fused

    def __init__(self, input_dims: dict, output_dim: int, token_dims: dict | None = None) -> None:
        super().__init__(input_dims, output_dim)
        self.config_kwargs = {"token_dims": dict(token_dims)} if token_dims else {}
        widths = {**self.input_dims, **(token_dims or {})}
        self.proj = nn.ModuleDict({m: nn.Linear(d, output_dim) for m, d in widths.items()})

    def forward(self, features, present=None) -> torch.Tensor:
        features, present = self.prepare(features, present)
        out = 0
        for m in self.modalities:
            f = features[m]
            if f.tokens is None:
                raise AssertionError(f"{m}: no tokens reached a fusion that requires them")
            TokenMean.seen.append((m, f.tokens.shape[-1]))
            out = out + zero_absent(self.proj[m](masked_mean(f.tokens, f.mask)), present[m])
        return out


class PooledOnly(TokenMean):
    """Reads tokens but cannot be told their widths."""

    def __init__(self, input_dims: dict, output_dim: int) -> None:
        super().__init__(input_dims, output_dim)


class MyClassifier(ClassificationTask):
    """A user task: single-label (inherited), selected by accuracy."""

    def default_metric(self) -> str:
        return "accuracy"


@pytest.fixture
def registered():
    with multimodal.registry.TASKS.scratch(), fusion.registry.FUSIONS.scratch():
        register_task("my_cls", MyClassifier)
        register_fusion("test_token_mean", TokenMean)
        register_fusion("test_pooled_only", PooledOnly)
        TokenMean.seen.clear()
        yield


def _overrides(tmp_path, manifest: str, tiny_text_dir: str, *extra: str) -> list[str]:
    return [f"data.train={manifest}", "data.audio_column=null", "data.num_workers=0",
            f"model.encoders={{text: 'text:{tiny_text_dir}', image: 'image:mobilenetv3_small_050'}}",
            "model.encoder_kwargs={image: {img_size: 32}}", "model.pretrained=false", "model.fusion_dim=8",
            "train.epochs=1", "train.batch_size=8", "train.log_with=none", "train.progress_bar=false",
            "train.save_checkpoints=false", f"train.output_dir={tmp_path / 'out'}", *extra]


def test_user_classification_task_and_token_fusion_train_evaluate_and_reload(tmp_path, day_night_manifest,
                                                                             tiny_text_dir, registered):
    cfg = load_config(None, _overrides(tmp_path, day_night_manifest, tiny_text_dir, "model.task=my_cls",
                                       "model.fusion=test_token_mean", "model.freeze_encoders=true"))  # cached
    metrics = run(cfg)
    assert metrics["metric_for_best"] == "accuracy" and 0.0 <= metrics["test"]["accuracy"] <= 1.0
    # MobileNetV3's tokens (288 wide) differ from its pooled features (1024): the task passed token_dims
    # because the fusion class requires tokens, and the cache stored them for it.
    assert {("image", 288), ("text", 32)} <= set(TokenMean.seen)
    model = load_model(tmp_path / "out" / "model")
    assert type(model.fusion) is TokenMean and model.fusion.config_kwargs == {"token_dims": {"image": 288}}
    assert model.head.label_type == "single_label"


def test_label_type_is_a_class_attribute_not_the_registered_name(tmp_path, day_night_manifest, tiny_text_dir,
                                                                 registered):
    assert get_task("single_label") is ClassificationTask and ClassificationTask.label_type == "single_label"
    assert get_task("multi_label") is MultiLabelTask and MultiLabelTask.label_type == "multi_label"
    assert get_task("regression") is RegressionTask and RegressionTask.label_type == "regression"
    cfg = load_config(None, _overrides(tmp_path, day_night_manifest, tiny_text_dir, "model.task=my_cls",
                                       "train.metric_for_best=macro_f1"))
    task = get_task("my_cls")(cfg)
    assert task.label_type == "single_label" and "macro_f1" in task.metric_names(cfg)
    cfg = load_config(None, _overrides(tmp_path, day_night_manifest, tiny_text_dir, "model.task=regression"))
    with pytest.warns(DeprecationWarning, match=r"use multimodal.get_task\('regression'\)\(cfg\)"):
        assert ClassificationTask(cfg).label_type == "regression"  # the old spelling keeps its meaning


def test_a_token_fusion_without_token_dims_is_refused_with_the_widths(tmp_path, day_night_manifest, tiny_text_dir,
                                                                      registered):
    cfg = load_config(None, _overrides(tmp_path, day_night_manifest, tiny_text_dir, "model.fusion=test_pooled_only"))
    with pytest.raises(ConfigError, match=r"reads tokens.*\{'image': 288\}.*needs a token_dims argument"):
        build_fusion(cfg, create_encoders(cfg))


def test_config_checks_read_the_label_type_of_a_user_task(tmp_path, day_night_manifest, tiny_text_dir, registered):
    # The probe, LP-FT and mixup checks ask the task class what it predicts, not its registered name.
    cfg = load_config(None, _overrides(tmp_path, day_night_manifest, tiny_text_dir, "model.task=my_cls",
                                       "train.linear_probe=true"))
    assert cfg.train.linear_probe and cfg.model.task == "my_cls"
    with pytest.raises(ConfigError, match="train.linear_probe fits classifiers"):
        load_config(None, _overrides(tmp_path, day_night_manifest, tiny_text_dir, "model.task=regression",
                                     "train.linear_probe=true"))
