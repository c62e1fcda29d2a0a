"""Text encoders: tiny BERT from a local dir, model_config builds, packaged MiniLM, offline errors."""

from __future__ import annotations

import pickle

import pytest
import torch

from encoders import EncoderError, EncoderOutput, create_encoder, encoder_from_config


@pytest.fixture(scope="module")
def tiny_text(tiny_text_dir):
    return create_encoder(f"text:{tiny_text_dir}")


def test_local_dir_forward_backward_and_masks(tiny_text):
    enc = tiny_text
    assert enc.modality == "text" and enc.output_dim == 32 and enc.pooling == "mean"
    texts = ["short", "a considerably longer sentence with many more word pieces in it", None, ""]
    batch = enc.preprocess(texts)
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    out = enc(batch)
    assert isinstance(out, EncoderOutput)
    B, T = batch["input_ids"].shape
    assert out.pooled.shape == (4, 32) and out.tokens.shape == (B, T, 32) and out.mask.shape == (B, T)
    assert out.mask.dtype == torch.bool
    assert torch.equal(out.mask, batch["attention_mask"].bool())
    # the long sentence fills the batch; the short one is padded
    assert out.mask[1].all() and not out.mask[0].all()
    out.pooled.sum().backward()
    grads = [p.grad for p in enc.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    enc.zero_grad(set_to_none=True)


def test_mean_pooling_ignores_padding(tiny_text):
    enc = tiny_text.eval()
    alone = enc(enc.preprocess(["short"])).pooled
    padded = enc(enc.preprocess(["short", "a much longer sentence that forces padding on the first row"])).pooled
    torch.testing.assert_close(alone[0], padded[0], atol=1e-5, rtol=1e-5)


def test_cls_pooling_and_max_length(tiny_text_dir):
    enc = create_encoder(f"text:{tiny_text_dir}", pooling="cls", max_length=8).eval()
    batch = enc.preprocess(["one two three four five six seven eight nine ten eleven twelve"])
    assert batch["input_ids"].shape[1] == 8
    out = enc(batch)
    torch.testing.assert_close(out.pooled, out.tokens[:, 0])
    with pytest.raises(EncoderError, match="pooling"):
        create_encoder(f"text:{tiny_text_dir}", pooling="max")


def test_bad_input_names_the_row(tiny_text):
    with pytest.raises(TypeError, match="text sample 1"):
        tiny_text.preprocess(["fine", 3])


def test_preprocessor_pickles(tiny_text):
    pre = pickle.loads(pickle.dumps(tiny_text.get_preprocessor(train=True)))
    a = pre(["hello world", None])
    b = tiny_text.preprocess(["hello world", None])
    assert torch.equal(a["input_ids"], b["input_ids"])


def test_model_config_with_tokenizer(tiny_text_dir):
    cfg = {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
           "intermediate_size": 32, "max_position_embeddings": 64}
    enc = create_encoder("text:some-org/unreachable-bert", pretrained=False, model_config=cfg, tokenizer=tiny_text_dir)
    assert enc.output_dim == 16 and enc.max_length == 64
    out = enc(enc.preprocess(["a b c", "d"]))
    assert out.pooled.shape == (2, 16)
    with pytest.raises(EncoderError, match="tokenizer"):
        create_encoder("text:some-org/unreachable-bert", pretrained=False, model_config=cfg)


def test_local_dir_pretrained_false_is_random(tiny_text_dir, tiny_text):
    random_enc = create_encoder(f"text:{tiny_text_dir}", pretrained=False)
    assert random_enc.output_dim == 32
    a = dict(tiny_text.state_dict())
    b = dict(random_enc.state_dict())
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_rebuild_from_config_identical_outputs(tiny_text, tmp_path):
    enc = tiny_text.eval()
    enc.save_assets(str(tmp_path))
    rebuilt = encoder_from_config(enc.get_config(), str(tmp_path))
    rebuilt.load_state_dict(enc.state_dict(), strict=True)
    rebuilt.eval()
    texts = ["the same text", "twice over", None]
    assert torch.equal(rebuilt.preprocess(texts)["input_ids"], enc.preprocess(texts)["input_ids"])
    with torch.no_grad():
        a, b = enc(enc.preprocess(texts)), rebuilt(rebuilt.preprocess(texts))
    assert torch.equal(a.pooled, b.pooled) and torch.equal(a.tokens, b.tokens)
    assert rebuilt.get_config() == enc.get_config()


def test_unknown_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderError) as info:
        create_encoder("text:some-org/nonexistent")
    msg = str(info.value)
    assert "some-org/nonexistent" in msg and "HF_HUB_OFFLINE" in msg
    assert "local directory" in msg and "pretrained=False" in msg


def test_missing_local_dir_is_a_clear_error(tmp_path):
    with pytest.raises(EncoderError, match="not found"):
        create_encoder(f"text:{tmp_path}/missing_model")


@pytest.mark.slow
def test_packaged_minilm_ranks_paraphrase_higher():
    enc = create_encoder("text:sentence-transformers/all-MiniLM-L6-v2").eval()
    assert enc.output_dim == 384 and enc.pooling == "mean" and enc.max_length == 256
    texts = ["A man is playing a guitar on stage.", "Someone performs music with a guitar.",
             "The stock market fell sharply on Tuesday."]
    with torch.no_grad():
        emb = torch.nn.functional.normalize(enc(enc.preprocess(texts)).pooled, dim=-1)
    para, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert para > unrelated + 0.3, (para, unrelated)
