"""Helpers shared by the deploy tests: small models of each encoder family."""

from __future__ import annotations

import socket

import torch

from encoders import create_encoder
from fusion import create_fusion
from multimodal import MultimodalModel, TaskHead

LABELS = ["ant", "bee", "cat"]


def fused(encoders: dict, fusion: str = "concat", classes: int = 3, seed: int = 0) -> MultimodalModel:
    """A classifier over `encoders` with random weights (seeded)."""
    torch.manual_seed(seed)
    fusion_module = create_fusion(fusion, {m: e.output_dim for m, e in encoders.items()}, 16)
    return MultimodalModel(encoders, fusion=fusion_module, head=TaskHead(16, classes)).eval()


def family_encoder(family: str, tiny_text_dir: str, tiny_audio_dir: str):
    """One small encoder of an encoder family the tests build."""
    torch.manual_seed(1)
    if family == "text":
        return create_encoder(f"text:{tiny_text_dir}")
    if family == "timm-cnn":
        return create_encoder("image:test_efficientnet", pretrained=False, img_size=32)
    if family == "timm-vit":
        return create_encoder("image:test_vit", pretrained=False)
    if family == "audio-mel":
        return create_encoder("audio-mel:test_efficientnet", pretrained=False, max_seconds=0.5)
    if family == "hf-audio":
        return create_encoder(f"audio:{tiny_audio_dir}", pretrained=False, max_seconds=2.0)
    raise ValueError(family)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
