"""Deploy fixtures: small models of every encoder family, their exported folders (built once per session), and
a small classifier trained by the runner on the built-in text-image demo."""

from __future__ import annotations

import os

import pytest
import torch
from deploy_helpers import LABELS, fused

from encoders import create_encoder
from multimodal import DualEncoder, MultimodalModel, load_config, run
from multimodal.deploy.export import export_model


@pytest.fixture(scope="session")
def fused_model(tiny_text_dir) -> MultimodalModel:
    """text + timm CNN image + audio-mel, concat fusion, 3 classes."""
    return fused({"text": create_encoder(f"text:{tiny_text_dir}"),
                  "image": create_encoder("image:test_efficientnet", pretrained=False, img_size=32),
                  "audio": create_encoder("audio-mel:test_efficientnet", pretrained=False, max_seconds=0.5)})


@pytest.fixture(scope="session")
def fused_dir(tmp_path_factory, fused_model) -> str:
    """`fused_model` saved as a PyTorch model folder with labels.json."""
    from multimodal.data.labels import LabelVocab

    path = str(tmp_path_factory.mktemp("fused") / "model")
    fused_model.save_pretrained(path)
    LabelVocab(LABELS).save(os.path.join(path, "labels.json"))
    return path


@pytest.fixture(scope="session")
def fused_onnx(tmp_path_factory, fused_model) -> str:
    """`fused_model` exported to ONNX."""
    path = str(tmp_path_factory.mktemp("fused_onnx") / "onnx")
    export_model(fused_model, path, "onnx", labels=LABELS)
    return path


@pytest.fixture(scope="session")
def dual_model(tiny_text_dir) -> DualEncoder:
    """A text-image two-tower model with random weights."""
    torch.manual_seed(0)
    return DualEncoder({"text": create_encoder(f"text:{tiny_text_dir}"),
                        "image": create_encoder("image:test_efficientnet", pretrained=False, img_size=32)},
                       embed_dim=8).eval()


@pytest.fixture(scope="session")
def dual_dir(tmp_path_factory, dual_model) -> str:
    path = str(tmp_path_factory.mktemp("dual") / "model")
    dual_model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def dual_onnx(tmp_path_factory, dual_model) -> str:
    path = str(tmp_path_factory.mktemp("dual_onnx") / "onnx")
    export_model(dual_model, path, "onnx")
    return path


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, tiny_text_dir) -> str:
    """Output folder of a small text-image classifier trained by `multimodal.run` on the built-in demo."""
    out = tmp_path_factory.mktemp("demo_run")
    cfg = load_config(None, [
        "data.demo=text_image", "data.demo_size=120", "data.audio_column=null", "data.num_workers=0",
        "data.feature_cache=null", f"model.encoders={{text: 'text:{tiny_text_dir}', image: 'image:test_efficientnet'}}",
        "model.encoder_kwargs={image: {img_size: 32}}", "model.pretrained=false", "model.fusion_dim=16",
        "train.epochs=2", "train.batch_size=16", "train.head_lr=0.01", "train.log_with=none",
        "train.progress_bar=false", "train.save_checkpoints=false", f"train.output_dir={out}",
    ])
    run(cfg)
    return str(out)
