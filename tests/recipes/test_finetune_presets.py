"""The fine-tuning presets load and validate (running them fine-tunes real encoders: see BENCHMARKS.md)."""

from __future__ import annotations

import glob
import os

import pytest

from multimodal.config import load_config

PRESETS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "configs", "*_finetune.yaml")))


def test_there_are_presets():
    assert len(PRESETS) >= 2


@pytest.mark.parametrize("path", PRESETS, ids=os.path.basename)
def test_preset_loads(path):
    cfg = load_config(path)
    assert cfg.model.freeze_encoders is False and cfg.data.feature_cache is None
    assert cfg.train.freeze_norm_stats  # pretrained BatchNorm statistics kept (BENCHMARKS.md section 11)
    audio = "audio" in cfg.model.encoders
    # audio: LP-FT LoRA on every tower; images: full fine-tuning (both measured in BENCHMARKS.md section 11)
    assert (cfg.model.peft is not None and cfg.model.peft.modalities is None) == audio
    assert cfg.train.probe_init == audio
