"""Loading a saved model folder never runs Python code shipped in it unless the caller passes
``trust_remote_code=True`` at that call; a ``trust_remote_code`` stored in the folder's config cannot switch it on."""

from __future__ import annotations

import json
import os

import pytest
import torch

from encoders import create_encoder
from fusion import create_fusion
from multimodal import MultimodalModel, TaskHead, load_model
from multimodal.evaluation.cli import main as evaluate_main
from multimodal.models import ModelFolderError


@pytest.fixture()
def modules_cache(tmp_path, monkeypatch):
    """Where transformers copies remote code: a temporary folder, never the user's HF cache."""
    import transformers.dynamic_module_utils as dmu

    monkeypatch.setattr(dmu, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    return tmp_path / "hf_modules"


def _tampered_folder(root, tiny_text_dir: str, model_type: str = "bert") -> tuple[str, str]:
    """A saved text classifier whose config says trust_remote_code and whose text assets auto_map to evil.py.

    evil.py writes a marker file when it is imported; returns (model dir, marker path)."""
    torch.manual_seed(0)
    text = create_encoder(f"text:{tiny_text_dir}", max_length=16)
    model = MultimodalModel({"text": text}, fusion=create_fusion("concat", {"text": text.output_dim}, 8), head=TaskHead(8, 2))
    folder = os.path.join(root, "model")
    model.save_pretrained(folder)
    config_path = os.path.join(folder, "config.json")
    config = json.load(open(config_path))
    config["encoders"]["text"]["trust_remote_code"] = True
    json.dump(config, open(config_path, "w"))
    assets = os.path.join(folder, "encoders", "text")
    hf_config = json.load(open(os.path.join(assets, "config.json")))
    hf_config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    hf_config["model_type"] = model_type
    json.dump(hf_config, open(os.path.join(assets, "config.json"), "w"))
    marker = os.path.join(root, "code-ran")
    with open(os.path.join(assets, "evil.py"), "w") as f:
        f.write(
            f"open({marker!r}, 'w').write('ran')\n"
            "from transformers import BertConfig, BertModel\n\n\n"
            f"class EvilConfig(BertConfig):\n    model_type = {model_type!r}\n\n\n"
            "class EvilModel(BertModel):\n    config_class = EvilConfig\n"
        )
    return folder, marker


def test_saved_config_cannot_switch_remote_code_on(tmp_path, tiny_text_dir, modules_cache):
    folder, marker = _tampered_folder(tmp_path, tiny_text_dir)
    model = load_model(folder)  # bert is known locally: the folder loads with transformers' own classes
    assert not os.path.exists(marker), "code from the model folder ran without trust_remote_code=True"
    assert model.encoders["text"].trust_remote_code is False
    assert type(model.encoders["text"].backbone).__name__ == "BertModel"
    MultimodalModel.from_pretrained(folder)
    assert not os.path.exists(marker)


def test_the_callers_flag_and_only_it_runs_the_code(tmp_path, tiny_text_dir, modules_cache):
    folder, marker = _tampered_folder(tmp_path, tiny_text_dir)
    model = MultimodalModel.from_pretrained(folder, trust_remote_code=True)
    assert os.path.exists(marker)
    assert type(model.encoders["text"].backbone).__name__ == "EvilModel"


def test_folder_that_needs_its_code_is_refused_with_the_folder_named(tmp_path, tiny_text_dir, modules_cache):
    folder, marker = _tampered_folder(tmp_path, tiny_text_dir, model_type="evil-bert")  # unknown type: only code helps
    with pytest.raises(ModelFolderError) as info:
        load_model(folder)
    assert os.path.join(folder, "encoders", "text") in str(info.value)
    assert "trust_remote_code=True" in str(info.value)
    assert not os.path.exists(marker)


def test_evaluate_cli_runs_folder_code_only_with_the_flag(tmp_path, tiny_text_dir, modules_cache, capsys):
    folder, marker = _tampered_folder(tmp_path, tiny_text_dir)
    missing = str(tmp_path / "no-such-manifest.csv")  # the model loads first; the manifest error comes after
    with pytest.raises(SystemExit):
        evaluate_main(["--model", folder, "--data", missing, "--task", "classification"])
    assert not os.path.exists(marker)
    with pytest.raises(SystemExit):
        evaluate_main(["--model", folder, "--data", missing, "--task", "classification", "--trust-remote-code"])
    assert os.path.exists(marker)


def test_audio_encoder_assets_never_run_folder_code(tmp_path, tiny_audio_dir, modules_cache):
    torch.manual_seed(0)
    audio = create_encoder(f"audio:{tiny_audio_dir}", max_seconds=0.5)
    model = MultimodalModel({"audio": audio}, fusion=create_fusion("concat", {"audio": audio.output_dim}, 8), head=TaskHead(8, 2))
    folder = str(tmp_path / "model")
    model.save_pretrained(folder)
    assets = os.path.join(folder, "encoders", "audio")
    marker = str(tmp_path / "code-ran")
    for name in ("config.json", "preprocessor_config.json"):
        data = json.load(open(os.path.join(assets, name)))
        data["auto_map"] = {"AutoConfig": "evil.C", "AutoModel": "evil.M", "AutoFeatureExtractor": "evil.F"}
        json.dump(data, open(os.path.join(assets, name), "w"))
    with open(os.path.join(assets, "evil.py"), "w") as f:
        f.write(f"open({marker!r}, 'w').write('ran')\n"
                "from transformers import Wav2Vec2Config as C, Wav2Vec2Model as M, Wav2Vec2FeatureExtractor as F\n")
    load_model(folder)
    assert not os.path.exists(marker)
