"""Gradient caching: in float64, the loss and every gradient equal those of the plain step over the whole batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from torch import nn

from encoders import create_encoder
from encoders.base import EncoderOutput
from multimodal.models.dual import DualEncoder
from multimodal.training.gradcache import GradientCache

ROWS, CHUNK = 8, 3  # three chunks of 3, 2, 3 rows


def _model(tiny_text_dir: str, image: str = "test_efficientnet_gn", dropout: float = 0.0) -> DualEncoder:
    torch.manual_seed(0)
    encoders = {"text": create_encoder(f"text:{tiny_text_dir}"),
                "image": create_encoder(f"image:{image}", pretrained=False, img_size=32)}
    model = DualEncoder(encoders, embed_dim=8, dropout=dropout, init_logit_scale=1.3).double().train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = dropout
    return model


def _batch(model: DualEncoder, rows: int = ROWS) -> dict:
    rng = np.random.default_rng(1)
    words = ["red", "green", "blue", "cat", "dog", "boat", "a", "big", "small", "tree"]
    texts = [" ".join(rng.choice(words, size=rng.integers(2, 7))) for _ in range(rows)]
    images = [rng.integers(0, 256, (24, 20, 3), dtype=np.uint8) for _ in range(rows)]
    batch = model.preprocess({"text": texts, "image": images})
    batch["present"]["text"][4] = False  # a row without its caption: neither query nor candidate
    return batch


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def _plain(model: DualEncoder, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss = model(inputs=batch["inputs"], present=batch["present"], features=batch.get("features")).loss
    loss.backward()
    return loss.detach(), _grads(model)


def _cached(model: DualEncoder, batch: dict, chunk: int = CHUNK) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss = GradientCache(chunk, Accelerator(cpu=True)).step(model, batch)
    return loss, _grads(model)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _calls(module: nn.Module) -> list[int]:
    calls: list[int] = []
    module.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def test_loss_and_every_gradient_equal_the_plain_large_batch(tiny_text_dir):
    model = _model(tiny_text_dir)
    batch = _batch(model)
    text_calls = _calls(model.encoders["text"])
    plain_loss, plain = _plain(model, batch)
    assert len(text_calls) == 1
    loss, cached = _cached(model, batch)
    assert len(text_calls) == 1 + 2 * 3, "three chunks, each embedded without and then with a graph"

    assert float(abs(loss - plain_loss)) < 1e-12
    assert _max_diff(cached, plain) < 1e-10
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(plain) >= trained - {"encoders.text.backbone.pooler.dense.weight", "encoders.text.backbone.pooler.dense.bias"}
    for part in ("head.logit_scale", "head.projections.text", "head.projections.image", "encoders.text.", "encoders.image."):
        assert any(n.startswith(part) and float(g.abs().max()) > 1e-6 for n, g in plain.items()), part
    # A batch that fits one chunk is the plain step itself.
    one_loss, one = _cached(model, batch, chunk=ROWS)
    assert float(abs(one_loss - plain_loss)) < 1e-12 and _max_diff(one, plain) < 1e-10


def _chunked_reference(model: DualEncoder, batch: dict, bounds: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Each chunk embedded with a graph, in order, then one loss and one backward: what GradCache must equal
    when the towers draw random numbers (dropout)."""
    parts: dict[str, list[torch.Tensor]] = {"text": [], "image": []}
    for start, stop in bounds:
        chunk = {m: {k: v[start:stop] for k, v in x.items()} for m, x in batch["inputs"].items()}
        out = model(inputs=chunk, compute_loss=False)
        for m in parts:
            parts[m].append(out.embeddings[m])
    model.head.loss({m: torch.cat(p) for m, p in parts.items()}, batch["present"]).backward()
    return _grads(model)


def test_dropout_sees_the_same_masks_when_each_chunk_is_run_again(tiny_text_dir):
    model = _model(tiny_text_dir, dropout=0.3)
    batch = _batch(model)
    bounds = GradientCache(CHUNK, Accelerator(cpu=True))._bounds(ROWS)
    torch.manual_seed(5)
    reference = _chunked_reference(model, batch, bounds)
    after_reference = torch.get_rng_state()
    torch.manual_seed(5)
    _, cached = _cached(model, batch)
    assert _max_diff(cached, reference) < 1e-10
    assert torch.equal(torch.get_rng_state(), after_reference), "the step leaves the RNG where one pass leaves it"
    torch.manual_seed(6)  # the check is not vacuous: other dropout masks give other gradients
    assert _max_diff(_chunked_reference(model, batch, bounds), reference) > 1e-3


def test_a_frozen_tower_is_encoded_once_and_cached_features_never(tiny_text_dir):
    model = _model(tiny_text_dir).freeze_encoders(["image"])
    batch = _batch(model)
    image_calls, text_calls = _calls(model.encoders["image"]), _calls(model.encoders["text"])
    plain_loss, plain = _plain(model, batch)
    loss, cached = _cached(model, batch)
    assert (len(image_calls), len(text_calls)) == (1 + 3, 1 + 6)
    assert float(abs(loss - plain_loss)) < 1e-12 and _max_diff(cached, plain) < 1e-10
    assert "head.projections.image.1.weight" in cached and not any(n.startswith("encoders.image") for n in cached)

    with torch.no_grad():  # the feature cache: image features come with the batch, the image encoder never runs
        features = {"image": EncoderOutput(model.encoders["image"](batch["inputs"]["image"]).pooled)}
    from_cache = {"inputs": {"text": batch["inputs"]["text"]}, "present": batch["present"], "features": features}
    del image_calls[:]
    loss, cached = _cached(model, from_cache)
    assert not image_calls
    assert float(abs(loss - plain_loss)) < 1e-12 and _max_diff(cached, plain) < 1e-10


def test_batchnorm_statistics_move_once_per_chunk(tiny_text_dir):
    model = _model(tiny_text_dir, image="test_efficientnet")
    batch = _batch(model)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    bounds = GradientCache(CHUNK, Accelerator(cpu=True))._bounds(ROWS)
    reference = _chunked_reference(model, batch, bounds)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    model.load_state_dict(start)
    with pytest.warns(UserWarning, match="BatchNorm layers of the image tower"):
        _, cached = _cached(model, batch)
    assert _max_diff(cached, reference) < 1e-10
    for k, v in stats.items():
        assert torch.equal(model.state_dict()[k], v), k
    assert int(stats["encoders.image.backbone.bn1.num_batches_tracked"]) == 3
