"""Deploy fixtures: small models of every encoder family and their exported folders (built once per session).
The small classifier trained on the built-in demo (`demo_run`) is in tests/conftest.py."""

from __future__ import annotations

import os

import pytest
import torch
from deploy_helpers import LABELS, fused

from encoders import create_encoder
from multimodal import DualEncoder, MultimodalModel
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
