"""Shared helpers in encoders.base: masked_mean (both HF encoders pool with it) and jsonable."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import encoders.audio
import encoders.text
from encoders import create_encoder
from encoders.base import jsonable, masked_mean


def test_masked_mean_ignores_padded_positions():
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 1, 0]], dtype=torch.bool)
    expected = torch.stack([hidden[0, :2].mean(0), hidden[1].mean(0), hidden[2, [1, 3]].mean(0)])
    torch.testing.assert_close(masked_mean(hidden, mask), expected)
    # huge, infinite or NaN values where the mask is false change nothing
    for junk in (1e30, float("inf"), float("nan")):
        spoiled = hidden.masked_fill(~mask.unsqueeze(-1), junk)
        torch.testing.assert_close(masked_mean(spoiled, mask), expected)
    # an integer 0/1 mask means the same as a bool one
    torch.testing.assert_close(masked_mean(hidden, mask.long()), expected)


def test_masked_mean_all_masked_row_is_zero_not_nan():
    hidden = torch.full((2, 3, 4), 7.0)
    mask = torch.tensor([[False, False, False], [True, False, True]])
    out = masked_mean(hidden, mask)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0], torch.zeros(4)) and torch.equal(out[1], torch.full((4,), 7.0))


def test_masked_mean_gradient_reaches_only_real_positions():
    hidden = torch.randn(1, 4, 2, requires_grad=True)
    masked_mean(hidden, torch.tensor([[True, True, False, False]])).sum().backward()
    assert torch.equal(hidden.grad[0, :2], torch.full((2, 2), 0.5)) and not hidden.grad[0, 2:].any()


def test_masked_mean_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="mask"):
        masked_mean(torch.zeros(2, 3, 4), torch.ones(2, 4, dtype=torch.bool))


def test_encoders_pool_with_masked_mean(monkeypatch, tiny_text_dir, tiny_audio_dir):
    calls = []

    def spy(hidden, mask):
        calls.append(tuple(hidden.shape))
        return masked_mean(hidden, mask)

    monkeypatch.setattr(encoders.text, "masked_mean", spy)
    monkeypatch.setattr(encoders.audio, "masked_mean", spy)
    text = create_encoder(f"text:{tiny_text_dir}")
    text(text.preprocess(["a b", "c"]))
    audio = create_encoder(f"audio:{tiny_audio_dir}")
    audio(audio.preprocess([(np.zeros(1600, np.float32), 16000)]))
    assert len(calls) == 2 and calls[0][0] == 2 and calls[1][0] == 1


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque thing>"


def test_jsonable_turns_everything_into_plain_json():
    value = {
        "tuple": (1, 2.5, "x"),
        "set": {3, 1, 2},
        "nested": [{"a": (np.float32(0.5),)}],
        "np_int": np.int64(7),
        "np_float": np.float64(0.25),
        "np_bool": np.bool_(True),
        "array": np.arange(6, dtype=np.int16).reshape(2, 3),
        "float_array": np.array([1.5, np.nan]),
        "tensor": torch.tensor([[1.0, 2.0]]),
        "scalar_tensor": torch.tensor(3),
        "path": Path("/tmp/some/file.json"),
        "nan": float("nan"),
        "np_nan": np.float64("nan"),
        "inf": float("-inf"),
        "none": None,
        "flag": False,
        1: "int key",
        ("a", 2): "tuple key",
        "object": _Opaque(),
    }
    out = jsonable(value)
    assert out == {
        "tuple": [1, 2.5, "x"],
        "set": [1, 2, 3],
        "nested": [{"a": [0.5]}],
        "np_int": 7,
        "np_float": 0.25,
        "np_bool": True,
        "array": [[0, 1, 2], [3, 4, 5]],
        "float_array": [1.5, None],
        "tensor": [[1.0, 2.0]],
        "scalar_tensor": 3,
        "path": "/tmp/some/file.json",
        "nan": None,
        "np_nan": None,
        "inf": None,
        "none": None,
        "flag": False,
        "1": "int key",
        "('a', 2)": "tuple key",
        "object": "<opaque thing>",
    }
    # the result is plain Python (no numpy/torch types left) and strict JSON accepts it
    assert type(out["np_int"]) is int and type(out["np_float"]) is float and type(out["np_bool"]) is bool
    assert json.loads(json.dumps(out, allow_nan=False)) == out
    assert jsonable({"mixed": {1, "b"}}) == {"mixed": [1, "b"]}  # unorderable set: still a stable list
    assert math.isnan(value["nan"])  # the input is left alone


def test_jsonable_is_what_encoders_write(tmp_path):
    enc = create_encoder("image:test_efficientnet", pretrained=False, img_size=32)
    enc.save_assets(str(tmp_path))
    saved = json.loads((tmp_path / "data_config.json").read_text())
    assert saved == jsonable(enc.data_config) and saved["input_size"] == [3, 32, 32]
    assert enc.preprocess_config()["data_config"] == saved
