"""Gradient checkpointing really recomputes the backbone's blocks, keeps the gradients, and switches off again."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from encoders import Encoder, EncoderError, create_encoder

KINDS = ["text", "image", "audio", "audio-mel"]


def _raw(modality: str) -> list:
    rng = np.random.default_rng(0)
    if modality == "text":
        return ["a short caption", "a rather longer caption about something else entirely", None]
    if modality == "image":
        return [rng.integers(0, 256, (40, 30, 3), dtype=np.uint8), None]
    return [(rng.standard_normal(8000).astype(np.float32), 16000), (rng.standard_normal(4000).astype(np.float32), 8000)]


def _encoder(kind: str, tiny_text_dir: str, tiny_audio_dir: str) -> Encoder:
    """A fresh, trainable encoder of `kind` (checkpointing state is per instance, so none is shared)."""
    specs = {
        "text": (f"text:{tiny_text_dir}", {}),
        "image": ("image:test_efficientnet", {"pretrained": False, "img_size": 32}),
        "audio": (f"audio:{tiny_audio_dir}", {"max_seconds": 1.0}),
        "audio-mel": ("audio-mel:test_efficientnet", {"pretrained": False, "max_seconds": 1.0}),
    }
    spec, kwargs = specs[kind]
    enc = create_encoder(spec, **kwargs)
    if kind == "audio":
        enc.backbone.config.layerdrop = 0.0  # wav2vec2 skips whole layers at random while training
    return enc.unfreeze().train()


def _inside_first_block(enc: Encoder, kind: str) -> nn.Module:
    """A module inside the first checkpointed block of the backbone.

    Inside, not the block itself: transformers checkpoints a layer's `forward`, so hooks on the layer
    module stay outside the checkpoint and run once; everything the layer calls runs again on recompute.
    """
    if kind == "text":
        return enc.backbone.encoder.layer[0].attention
    if kind == "audio":
        return enc.backbone.encoder.layers[0].attention
    return enc.backbone.blocks[0][0].conv  # test_efficientnet: timm checkpoints each block


def _forward_backward(enc: Encoder, batch: dict, module: nn.Module) -> tuple[int, dict[str, torch.Tensor]]:
    """Run forward+backward with the same randomness every time; return how often `module` ran, and the grads."""
    calls = []
    handle = module.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        torch.manual_seed(0)
        np.random.seed(0)  # wav2vec2's SpecAugment masks draw from numpy
        random.seed(0)
        enc.zero_grad(set_to_none=True)
        out = enc(batch)
        (out.pooled.square().mean() + out.tokens.mean()).backward()
    finally:
        handle.remove()
    grads = {n: p.grad.detach().clone() for n, p in enc.named_parameters() if p.grad is not None}
    enc.zero_grad(set_to_none=True)
    return len(calls), grads


@pytest.mark.parametrize("kind", KINDS)
def test_grad_checkpointing_recomputes_blocks_with_equal_gradients(kind, tiny_text_dir, tiny_audio_dir):
    enc = _encoder(kind, tiny_text_dir, tiny_audio_dir)
    batch = enc.preprocess(_raw(enc.modality))
    module = _inside_first_block(enc, kind)

    plain_calls, plain_grads = _forward_backward(enc, batch, module)
    enc.set_grad_checkpointing(True)
    ckpt_calls, ckpt_grads = _forward_backward(enc, batch, module)
    enc.set_grad_checkpointing(False)
    off_calls, off_grads = _forward_backward(enc, batch, module)

    assert (plain_calls, ckpt_calls, off_calls) == (1, 2, 1), "checkpointing must rerun the block in backward"
    n_params = sum(1 for p in enc.parameters() if p.requires_grad)
    assert len(plain_grads) >= 0.9 * n_params
    assert ckpt_grads.keys() == plain_grads.keys() == off_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=1e-5, atol=1e-6, msg=f"{kind}: {name}")
        torch.testing.assert_close(off_grads[name], grad, rtol=1e-5, atol=1e-6, msg=f"{kind}: {name}")


def test_encoders_without_checkpointing_say_so():
    class Plain(Encoder):
        spec = "plain:x"

    with pytest.raises(EncoderError, match="no gradient checkpointing"):
        Plain().set_grad_checkpointing(True)
