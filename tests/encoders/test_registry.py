"""The open encoder registry: a user kind registered here works with every factory function."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any, Optional

import pytest
import torch

import encoders
import encoders.registry
from encoders import (
    Encoder,
    EncoderError,
    EncoderOutput,
    create_encoder,
    encoder_from_config,
    get_encoder_class,
    list_encoders,
    masked_mean,
    parse_spec,
    register_encoder,
)
from encoders.audio import HFAudioEncoder
from encoders.audio_mel import MelAudioEncoder
from encoders.image import ImageEncoder
from encoders.text import TextEncoder

BUILTINS = ["text", "image", "audio", "audio-mel"]


@pytest.fixture(autouse=True)
def scratch_registry():
    """Registrations made by a test are undone after it, so user kinds never leak into other tests."""
    with encoders.registry.ENCODERS.scratch():
        yield


class BytesPreprocessor:
    """Picklable: strings (None -> "") -> byte ids (+1, 0 is padding) and a mask, padded to the longest."""

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length

    def __call__(self, batch: list) -> dict[str, torch.Tensor]:
        rows = [list((text or "").encode("utf-8"))[: self.max_length] or [0] for text in batch]
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row) + 1
        return {"input_ids": ids, "attention_mask": ids != 0}


class BagOfBytes(Encoder):
    """Bag-of-bytes text encoder: a byte embedding, mean-pooled over the real bytes."""

    modality = "text"

    def __init__(self, spec: str, dim: int = 8, max_length: int = 64) -> None:
        super().__init__()
        self.spec, self.dim, self.max_length = spec, int(dim), int(max_length)
        self.backbone = torch.nn.Embedding(257, self.dim, padding_idx=0)
        self.output_dim = self.dim

    @classmethod
    def create(cls, name: str, pretrained: bool = True, dim: int = 8, max_length: int = 64) -> BagOfBytes:
        return cls(f"bag-of-bytes:{name}", dim, max_length)

    @classmethod
    def from_config(cls, config: dict[str, Any], assets_dir: Optional[str] = None) -> BagOfBytes:
        return cls(config["spec"], config["dim"], config["max_length"])

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        tokens = self.backbone(inputs["input_ids"])
        mask = inputs["attention_mask"].bool()
        return EncoderOutput(pooled=masked_mean(tokens, mask), tokens=tokens, mask=mask)

    def get_preprocessor(self, train: bool = False) -> BytesPreprocessor:
        return BytesPreprocessor(self.max_length)

    def get_config(self) -> dict[str, Any]:
        return {"kind": "bag-of-bytes", "spec": self.spec, "dim": self.dim, "max_length": self.max_length}


class ConstantFeatures(Encoder):
    """Constant features whatever the input (a baseline)."""

    modality = "image"

    def __init__(self, spec: str, value: float = 1.0) -> None:
        super().__init__()
        self.spec, self.value, self.output_dim = spec, float(value), 3
        self.backbone = torch.nn.Identity()

    @classmethod
    def create(cls, name: str, pretrained: bool = True, value: float = 1.0) -> ConstantFeatures:
        return cls(f"constant:{name}", value)

    @classmethod
    def from_config(cls, config: dict[str, Any], assets_dir: Optional[str] = None) -> ConstantFeatures:
        return cls(config["spec"], config["value"])

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        n = inputs["n"].shape[0]
        return EncoderOutput(pooled=torch.full((n, 3), self.value), tokens=torch.full((n, 1, 3), self.value),
                             mask=torch.ones(n, 1, dtype=torch.bool))

    def get_preprocessor(self, train: bool = False):
        return lambda batch: {"n": torch.zeros(len(batch))}

    def get_config(self) -> dict[str, Any]:
        return {"kind": "constant", "spec": self.spec, "value": self.value}


def _register_bag_of_bytes() -> type:
    return register_encoder(
        "bag-of-bytes", description="UTF-8 bytes through an embedding, masked mean", example="bag-of-bytes:tiny"
    )(BagOfBytes)


def test_builtins_are_in_the_one_registry():
    assert [row.kind for row in list_encoders()] == BUILTINS
    classes = [TextEncoder, ImageEncoder, HFAudioEncoder, MelAudioEncoder]
    assert [get_encoder_class(kind) for kind in BUILTINS] == classes
    assert encoders.registry.ENCODERS.list() == BUILTINS
    assert get_encoder_class(" Image ") is ImageEncoder
    with pytest.raises(EncoderError, match="unknown encoder kind 'video'.*audio-mel"):
        get_encoder_class("video")
    with pytest.raises(EncoderError, match="unknown encoder kind None"):
        get_encoder_class(None)
    with pytest.raises(KeyError, match=r"unknown encoder kind 'imgae' \(did you mean 'image'\?\)"):
        get_encoder_class("imgae")  # one UnknownNameError: a KeyError, and the EncoderError callers caught before
    assert [r.kind for r in list_encoders("audio*")] == ["audio", "audio-mel"]


def test_user_kind_as_decorator_works_everywhere(tmp_path):
    cls = _register_bag_of_bytes()
    assert cls is BagOfBytes  # the decorator hands the class back unchanged
    assert get_encoder_class("bag-of-bytes") is BagOfBytes
    assert parse_spec("Bag-Of-Bytes:tiny") == ("bag-of-bytes", "tiny")
    row = list_encoders()[-1]
    assert (row.kind, row.description, row.example) == (
        "bag-of-bytes", "UTF-8 bytes through an embedding, masked mean", "bag-of-bytes:tiny"
    )

    enc = create_encoder("bag-of-bytes:tiny", dim=6).eval()
    assert isinstance(enc, BagOfBytes) and enc.spec == "bag-of-bytes:tiny" and enc.output_dim == enc.token_dim == 6
    batch = enc.preprocess(["hi", "a longer text", None])
    out = enc(batch)
    assert out.pooled.shape == (3, 6) and out.tokens.shape[-1] == enc.token_dim

    config = json.loads(json.dumps(enc.get_config()))
    rebuilt = encoder_from_config(config, str(tmp_path))
    assert type(rebuilt) is BagOfBytes and rebuilt.get_config() == enc.get_config()
    rebuilt.load_state_dict(enc.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(batch).pooled, out.pooled)

    with pytest.raises(EncoderError, match="unexpected keyword"):
        create_encoder("bag-of-bytes:tiny", width=3)


def test_plain_call_registration_and_listing_order():
    assert register_encoder("constant", ConstantFeatures) is ConstantFeatures
    _register_bag_of_bytes()
    rows = list_encoders()
    assert [r.kind for r in rows] == [*BUILTINS, "constant", "bag-of-bytes"]
    assert rows[-2].description == "Constant features whatever the input (a baseline)."  # the docstring's first line
    assert rows[-2].example == ""
    enc = create_encoder("constant:ones", value=2.0)
    assert torch.equal(enc(enc.preprocess([None, None])).pooled, torch.full((2, 3), 2.0))
    assert encoder_from_config(enc.get_config()).value == 2.0


def test_registering_again():
    _register_bag_of_bytes()
    before = list_encoders()
    assert _register_bag_of_bytes() is BagOfBytes  # same class: a no-op
    assert register_encoder("BAG-OF-BYTES", BagOfBytes) is BagOfBytes
    assert list_encoders() == before

    class Impostor(BagOfBytes):
        pass

    with pytest.raises(ValueError, match=r"'bag-of-bytes' is already registered to .*BagOfBytes.*Impostor"):
        register_encoder("bag-of-bytes", Impostor)
    with pytest.raises(ValueError, match="'image' is already registered to encoders.image.ImageEncoder"):
        register_encoder("image", BagOfBytes)
    assert get_encoder_class("bag-of-bytes") is BagOfBytes and get_encoder_class("image") is ImageEncoder


def test_registration_is_checked():
    for bad in ("", "my:kind", "two words"):
        with pytest.raises(ValueError, match="kind"):
            register_encoder(bad, BagOfBytes)
    with pytest.raises(ValueError, match="must start with 'bag:'"):
        register_encoder("bag", BagOfBytes, example="bytes:tiny")
    with pytest.raises(TypeError, match="expected a class"):
        register_encoder("thing", BagOfBytes(spec="x"))
    with pytest.raises(TypeError, match="must be a string"):
        register_encoder(None, BagOfBytes)

    class NoFactory(Encoder):
        """Has neither create nor from_config."""

    with pytest.raises(TypeError, match="lacks create, from_config"):
        register_encoder("no-factory", NoFactory)
    assert [r.kind for r in list_encoders()] == BUILTINS  # nothing half-registered


def test_unregistered_config_kind_says_to_import_the_module():
    with pytest.raises(EncoderError, match="unknown kind 'bag-of-bytes'.*registered"):
        encoder_from_config({"kind": "bag-of-bytes", "spec": "bag-of-bytes:tiny", "dim": 4, "max_length": 8})
    with pytest.raises(EncoderError, match="unknown kind None"):
        encoder_from_config({"spec": "x"})


def test_importing_a_user_module_registers_its_kind_in_a_fresh_process(tmp_path):
    (tmp_path / "my_encoders.py").write_text(textwrap.dedent('''
        import torch
        from encoders import Encoder, EncoderOutput, register_encoder

        @register_encoder("constant", description="constant features", example="constant:zero")
        class Constant(Encoder):
            def __init__(self, spec):
                super().__init__()
                self.spec, self.output_dim, self.backbone = spec, 2, torch.nn.Identity()

            @classmethod
            def create(cls, name, pretrained=True):
                return cls("constant:" + name)

            @classmethod
            def from_config(cls, config, assets_dir=None):
                return cls(config["spec"])

            def get_config(self):
                return {"kind": "constant", "spec": self.spec}
    '''))
    script = textwrap.dedent('''
        import json
        import my_encoders
        from encoders import create_encoder, encoder_from_config, list_encoders
        config = json.loads(json.dumps(create_encoder("constant:zero").get_config()))
        rebuilt = encoder_from_config(config)
        print(json.dumps({"kinds": [r.kind for r in list_encoders()], "type": type(rebuilt).__name__,
                          "spec": rebuilt.spec}))
    ''')
    repo_root = os.path.dirname(os.path.dirname(encoders.__file__))
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), repo_root])},
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"kinds": [*BUILTINS, "constant"], "type": "Constant", "spec": "constant:zero"}

