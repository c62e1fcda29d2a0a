"""Fixtures of the model tests."""

from __future__ import annotations

import pytest
import torch

from encoders import create_encoder
from fusion import create_fusion
from multimodal import MultimodalModel, TaskHead


@pytest.fixture(scope="session")
def saved(tmp_path_factory, tiny_text_dir) -> str:
    """A small text + image classifier saved with `save_pretrained` (tests copy it before changing it)."""
    torch.manual_seed(0)
    text = create_encoder(f"text:{tiny_text_dir}", max_length=16)
    image = create_encoder("image:test_efficientnet", pretrained=False, img_size=32)
    fusion = create_fusion("concat", {"text": text.output_dim, "image": image.output_dim}, 8)
    folder = str(tmp_path_factory.mktemp("saved") / "model")
    MultimodalModel({"text": text, "image": image}, fusion=fusion, head=TaskHead(8, 2)).save_pretrained(folder)
    return folder
