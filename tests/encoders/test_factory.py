"""The factory and the uniform Encoder API across every kind."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import encoders
from encoders import Encoder, EncoderError, EncoderOutput, create_encoder, encoder_from_config, list_encoders


def _raw(modality: str) -> list:
    rng = np.random.default_rng(0)
    if modality == "text":
        return ["a short caption", "a rather longer caption about something else entirely", None]
    if modality == "image":
        return [rng.integers(0, 256, (40, 30, 3), dtype=np.uint8), rng.integers(0, 256, (20, 20), dtype=np.uint8), None]
    return [(rng.standard_normal(4000).astype(np.float32), 8000), (rng.standard_normal((2, 22050)).astype(np.float32), 44100), None]


@pytest.fixture(scope="module", params=["text", "image", "audio", "audio-mel"])
def any_encoder(request, tiny_text_dir, tiny_audio_dir) -> Encoder:
    specs = {
        "text": (f"text:{tiny_text_dir}", {}),
        "image": ("image:test_efficientnet", {"pretrained": False, "img_size": 32}),
        "audio": (f"audio:{tiny_audio_dir}", {"max_seconds": 1.0}),
        "audio-mel": ("audio-mel:test_efficientnet", {"pretrained": False, "max_seconds": 1.0}),
    }
    spec, kwargs = specs[request.param]
    return create_encoder(spec, **kwargs)


def test_uniform_api(any_encoder, tmp_path):
    enc = any_encoder
    assert enc.spec and enc.modality in ("text", "image", "audio") and enc.output_dim > 0
    json.dumps(enc.get_config())
    json.dumps(enc.preprocess_config())
    out = enc.train()(enc.preprocess(_raw(enc.modality), train=True))
    assert isinstance(out, EncoderOutput)
    assert out.pooled.shape == (3, enc.output_dim)
    assert out.tokens.shape[0] == 3 and out.mask.shape == out.tokens.shape[:2] and out.mask.dtype == torch.bool
    assert out.mask.any(dim=1).all()


def test_token_dim_is_the_token_width(any_encoder, tmp_path):
    enc = any_encoder.eval()
    with torch.no_grad():
        out = enc(enc.preprocess(_raw(enc.modality)))
    assert isinstance(enc.token_dim, int) and enc.token_dim > 0
    assert out.tokens.shape[-1] == enc.token_dim
    enc.save_assets(str(tmp_path))
    assert encoder_from_config(json.loads(json.dumps(enc.get_config())), str(tmp_path)).token_dim == enc.token_dim


@pytest.mark.parametrize(
    "spec, kwargs",
    [
        ("image:mobilenetv3_small_050", {"img_size": 32}),  # a head conv after the tokens widens the pooled output
        ("audio-mel:mobilenetv3_small_050", {"max_seconds": 0.5}),
    ],
)
def test_token_dim_where_tokens_are_narrower_than_pooled(spec, kwargs):
    enc = create_encoder(spec, pretrained=False, **kwargs).eval()
    with torch.no_grad():
        out = enc(enc.preprocess(_raw(enc.modality)))
    assert out.tokens.shape[-1] == enc.token_dim == 288 and out.pooled.shape[-1] == enc.output_dim == 1024


def test_token_dim_defaults_to_output_dim():
    class Plain(Encoder):
        pass

    enc = Plain()
    enc.output_dim = 12
    assert enc.token_dim == 12
    enc.token_dim = 5
    assert enc.token_dim == 5 and enc.output_dim == 12


def test_freeze_then_unfreeze_controls_gradients(any_encoder):
    enc = any_encoder
    batch = enc.preprocess(_raw(enc.modality))
    enc.freeze()
    enc.train()
    assert enc.frozen and all(not m.training for m in enc.children())
    assert not any(p.requires_grad for p in enc.parameters())
    out = enc(batch)
    assert not out.pooled.requires_grad
    enc.unfreeze()
    enc.train()
    assert not enc.frozen and all(m.training for m in enc.children())
    enc.zero_grad(set_to_none=True)
    enc(batch).pooled.square().mean().backward()
    with_grad = [n for n, p in enc.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(with_grad) >= 0.9 * sum(1 for _ in enc.parameters()), "most parameters should receive gradients"
    enc.zero_grad(set_to_none=True)


def test_rebuild_matches(any_encoder, tmp_path):
    enc = any_encoder.eval()
    enc.save_assets(str(tmp_path))
    config = json.loads(json.dumps(enc.get_config()))
    rebuilt = encoder_from_config(config, str(tmp_path)).eval()
    assert type(rebuilt) is type(enc) and rebuilt.output_dim == enc.output_dim and rebuilt.spec == enc.spec
    rebuilt.load_state_dict(enc.state_dict(), strict=True)
    raw = _raw(enc.modality)
    a_in, b_in = enc.preprocess(raw), rebuilt.preprocess(raw)
    assert a_in.keys() == b_in.keys() and all(torch.equal(a_in[k], b_in[k]) for k in a_in)
    with torch.no_grad():
        a, b = enc(a_in), rebuilt(b_in)
    assert torch.equal(a.pooled, b.pooled) and torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)


def test_list_encoders_describes_every_kind():
    rows = list_encoders()
    assert [r.kind for r in rows] == ["text", "image", "audio", "audio-mel"]
    for row in rows:
        assert row.description and row.example.startswith(row.kind + ":")
        assert encoders.parse_spec(row.example)[0] == row.kind


def test_bad_specs_and_kwargs():
    with pytest.raises(EncoderError, match="kind:name"):
        create_encoder("resnet50")
    with pytest.raises(EncoderError, match="unknown encoder kind"):
        create_encoder("video:x")
    with pytest.raises(EncoderError, match="names no model"):
        create_encoder("image:")
    with pytest.raises(EncoderError, match="unexpected keyword"):
        create_encoder("text:x", pretrained=False, pooling_mode="mean")
    with pytest.raises(EncoderError, match="unknown kind"):
        encoder_from_config({"kind": "smell"}, None)
    with pytest.raises(EncoderError, match="not found"):
        encoder_from_config({"kind": "text", "spec": "text:x", "name": "x"}, "/nonexistent/dir")


def test_packaged_text_with_pretrained_false_is_offline_and_random(minilm_dir):
    enc = create_encoder("text:sentence-transformers/all-MiniLM-L6-v2", pretrained=False)
    assert enc.output_dim == 384 and enc.pooling == "mean"
    from safetensors.torch import load_file

    real = load_file(f"{minilm_dir}/model.safetensors")
    key = next(k for k in real if k.endswith("word_embeddings.weight"))
    assert not torch.equal(enc.backbone.embeddings.word_embeddings.weight, real[key])


def test_import_is_quiet():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", "import encoders"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
