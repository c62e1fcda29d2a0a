"""A tampered or torn saved-model folder fails to load with a `ModelFolderError` naming the file and the field."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from encoders import create_encoder
from multimodal import DualEncoder, MultimodalModel, load_model
from multimodal.models import ModelFolderError


def _edit(field_path: list, value=None, delete: bool = False):
    def apply(config: dict) -> dict:
        node = config
        for key in field_path[:-1]:
            node = node[key]
        if delete:
            del node[field_path[-1]]
        else:
            node[field_path[-1]] = value
        return config

    return apply


def _write_config(folder: str, change) -> None:
    path = os.path.join(folder, "config.json")
    config = json.load(open(path))
    json.dump(change(config), open(path, "w"))


def _garbage_weights(folder: str) -> None:
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        f.write(os.urandom(2000))


def _truncated_weights(folder: str) -> None:
    path = os.path.join(folder, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _binary_config(folder: str) -> None:
    with open(os.path.join(folder, "config.json"), "wb") as f:
        f.write(bytes(range(256)))


CASES = {
    # name: (how to tamper, file named, text the message must hold)
    "garbage model.safetensors": (_garbage_weights, "model.safetensors", "not a readable safetensors file"),
    "truncated model.safetensors": (_truncated_weights, "model.safetensors", "not a readable safetensors file"),
    "unknown timm model": (lambda d: _write_config(d, _edit(["encoders", "image", "model_name"], "no_such_net")),
                           "config.json", "field 'encoders.image'"),
    "encoders as a list": (lambda d: _write_config(d, _edit(["encoders"], ["text", "image"])), "config.json",
                           "field 'encoders' must be a non-empty object"),
    "config.json a JSON list": (lambda d: _write_config(d, lambda c: [c]), "config.json", "expected a JSON object"),
    "config.json binary": (_binary_config, "config.json", "invalid JSON"),
    "extra head field": (lambda d: _write_config(d, _edit(["head", "colour"], "red")), "config.json",
                         "field 'head': TaskHead.__init__() got an unexpected keyword argument 'colour'"),
    "missing head field": (lambda d: _write_config(d, _edit(["head", "num_outputs"], delete=True)), "config.json",
                           "field 'head'"),
    "missing pooling": (lambda d: _write_config(d, _edit(["encoders", "text", "pooling"], delete=True)), "config.json",
                        "field 'encoders.text' lacks 'pooling'"),
    "encoder config not an object": (lambda d: _write_config(d, _edit(["encoders", "text"], 5)), "config.json",
                                     "field 'encoders.text' must be an object"),
    "unknown encoder kind": (lambda d: _write_config(d, _edit(["encoders", "text", "kind"], "nope")), "config.json",
                             "field 'encoders.text'"),
    "unknown fusion": (lambda d: _write_config(d, _edit(["fusion", "name"], "nope")), "config.json",
                       "field 'fusion': unknown fusion 'nope'"),
    "missing fusion": (lambda d: _write_config(d, _edit(["fusion"], delete=True)), "config.json",
                       "missing field 'fusion'"),
    "fusion kwargs unknown": (lambda d: _write_config(d, _edit(["fusion", "kwargs"], {"zzz": 1})), "config.json",
                              "field 'fusion'"),
    "frozen names an unknown modality": (lambda d: _write_config(d, _edit(["frozen"], ["audio"])), "config.json",
                                         "field 'frozen'"),
    "tied_weights not a mapping": (lambda d: _write_config(d, _edit(["tied_weights"], [1])), "config.json",
                                   "field 'tied_weights'"),
    "model_type a list": (lambda d: _write_config(d, _edit(["model_type"], [1])), "config.json", "unknown model_type"),
    "width mismatch": (lambda d: _write_config(d, _edit(["fusion", "input_dims", "text"], 33)), "config.json",
                       "outputs 32 features but the fusion expects 33"),
    "text assets missing": (lambda d: shutil.rmtree(os.path.join(d, "encoders", "text")), "config.json",
                            "field 'encoders.text'"),
    "head of another width": (lambda d: _write_config(d, _edit(["head", "num_outputs"], 3)), "model.safetensors",
                              "does not match the architecture"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_tampered_folder_names_file_and_field(name, saved, tmp_path):
    tamper, file_name, expected = CASES[name]
    folder = str(tmp_path / "copy")
    shutil.copytree(saved, folder)
    tamper(folder)
    with pytest.raises(ModelFolderError) as info:
        load_model(folder)
    message = str(info.value)
    assert os.path.join(folder, file_name) in message, message
    assert expected in message, message


def test_untouched_copy_loads(saved, tmp_path):
    folder = str(tmp_path / "copy")
    shutil.copytree(saved, folder)
    assert isinstance(load_model(folder), MultimodalModel)


def test_dual_encoder_head_fields(tmp_path, tiny_text_dir):
    towers = {"text": create_encoder(f"text:{tiny_text_dir}"),
              "image": create_encoder("image:test_efficientnet", pretrained=False, img_size=32)}
    folder = str(tmp_path / "towers")
    DualEncoder(towers, embed_dim=8).save_pretrained(folder)
    _write_config(folder, _edit(["head", "embed_dim"], delete=True))
    with pytest.raises(ModelFolderError, match=r"config\.json: cannot rebuild the dual_encoder model: field 'head'"):
        load_model(folder)


def test_missing_files_are_still_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        load_model(tmp_path)
    with pytest.raises(ModelFolderError):
        load_model(tmp_path)
