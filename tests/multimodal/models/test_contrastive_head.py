"""The two-tower contrastive head: per-modality embeddings, temperature, pairwise InfoNCE, configs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from multimodal.models.contrastive import ContrastiveHead, clip_loss

DIMS = {"audio": 8, "image": 10, "text": 6}


def _pooled(n: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(n, d, generator=g) for m, d in DIMS.items()}


@pytest.mark.parametrize("projection", ["linear", "mlp"])
def test_embeds_one_modality_alone_normalised(projection):
    head = ContrastiveHead({"image": 10, "text": 6}, 4, projection=projection)
    x = _pooled()
    emb = head.embed("text", x["text"])  # no image needed
    assert emb.shape == (5, 4)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(5))
    raw = head.embed("text", x["text"], normalize=False)
    torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=-1), emb)
    with pytest.raises(KeyError, match="no 'audio' projection"):
        head.embed("audio", x["audio"])
    with pytest.raises(ValueError, match=r"expected \[B, 6\]"):
        head.embed("text", x["image"])


def test_temperature_init_clamp_and_no_decay():
    head = ContrastiveHead({"image": 10, "text": 6}, 4)
    assert head.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    with torch.no_grad():
        head.logit_scale.fill_(10.0)
    assert head.clamped_logit_scale().item() == pytest.approx(math.log(100.0))
    assert head.no_weight_decay() == {"logit_scale"}


def test_loss_is_clip_loss_over_pairs_and_skips_absent_rows():
    head = ContrastiveHead({"image": 10, "text": 6}, 4, gather=False)
    x = _pooled()
    emb = {m: head.embed(m, x[m]) for m in ("image", "text")}
    present = {"image": torch.tensor([True, True, False, True, True]), "text": torch.ones(5, dtype=torch.bool)}
    loss = head.loss(emb, present)
    keep = present["image"]
    expected = clip_loss(emb["image"][keep], emb["text"][keep], log_logit_scale=head.clamped_logit_scale(), gather=False)
    torch.testing.assert_close(loss, expected)
    # changing the absent row does not change the loss
    x["image"][2] = 1e3
    emb2 = {m: head.embed(m, x[m]) for m in ("image", "text")}
    torch.testing.assert_close(head.loss(emb2, present), loss)


def test_three_towers_average_every_pair_and_custom_pairs():
    head = ContrastiveHead(DIMS, 4, gather=False)
    assert head.pairs == [("audio", "image"), ("audio", "text"), ("image", "text")]
    x = _pooled()
    emb = {m: head.embed(m, x[m]) for m in DIMS}
    scale = head.clamped_logit_scale().exp()  # clip_loss takes the exponentiated scale
    pair_losses = [clip_loss(emb[a], emb[b], scale, gather=False) for a, b in head.pairs]
    torch.testing.assert_close(head.loss(emb), torch.stack(pair_losses).mean())
    # with only two towers in a batch, only their pair counts
    torch.testing.assert_close(head.loss({m: emb[m] for m in ("image", "text")}), pair_losses[2])
    only = ContrastiveHead(DIMS, 4, gather=False, pairs=[["image", "audio"]])
    assert only.pairs == [("image", "audio")]
    with pytest.raises(ValueError, match="needs both sides of a pair"):
        only.loss({"text": emb["text"], "image": emb["image"]})
    with pytest.raises(ValueError, match="two different modalities"):
        ContrastiveHead(DIMS, 4, pairs=[["image", "image"]])
    with pytest.raises(ValueError, match="at least two modalities"):
        ContrastiveHead({"text": 6}, 4)


def test_config_round_trip():
    head = ContrastiveHead(DIMS, 4, projection="mlp", hidden_dim=7, pairs=[["audio", "text"]])
    rebuilt = ContrastiveHead.from_config(json.loads(json.dumps(head.get_config())))
    rebuilt.load_state_dict(head.state_dict(), strict=True)
    x = _pooled()
    for m in DIMS:
        assert torch.equal(rebuilt.embed(m, x[m]), head.embed(m, x[m]))
    assert rebuilt.pairs == head.pairs
