"""Image-text retrieval: contrastive (CLIP/CLAP-style) fine-tuning of a text and an image encoder.

    accelerate launch recipes/image_text_retrieval.py                                   # built-in demo
    accelerate launch recipes/image_text_retrieval.py --config my.yaml retrieval.lock_image=true
    python recipes/image_text_retrieval.py --config my.yaml train.epochs=5

Data: manifests with one row per (image, caption) pair; rows sharing the image path are one item with
several captions. Lock a tower with retrieval.lock_image / retrieval.lock_text (LiT), lock both to train
the projections only, or none to fine-tune everything. Writes model/ (save_pretrained), metrics.json,
report.md (+ PNG plots, report.html) and config.yaml to train.output_dir.
See recipes/configs/image_text_retrieval.yaml.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from multimodal.config import ConfigError, parse_cli  # noqa: E402
from multimodal.retrieval import RetrievalExperimentConfig, run_retrieval, summarize_retrieval  # noqa: E402

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "image_text_retrieval.yaml")


def main(argv: list[str] | None = None) -> dict:
    """Parse ``[--config FILE] [key=value ...]``, train, evaluate, write outputs; returns the metrics."""
    try:
        cfg = parse_cli(argv, DEFAULT_CONFIG, cls=RetrievalExperimentConfig)
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
    metrics = run_retrieval(cfg, "image")
    from multimodal.build import process_state

    if process_state().is_main_process:
        print(summarize_retrieval(metrics))
        print(f"outputs in {os.path.abspath(cfg.train.output_dir)}")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
