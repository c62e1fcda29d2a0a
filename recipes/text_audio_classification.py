"""Text-audio classification: fine-tune a text and an audio encoder jointly through a fusion head.

    accelerate launch recipes/text_audio_classification.py                      # built-in demo
    accelerate launch recipes/text_audio_classification.py --config my.yaml train.epochs=3
    python recipes/text_audio_classification.py --config my.yaml model.fusion=gated

Writes the best model (save_pretrained), metrics.json, config.yaml, labels.json and
training_curves.png to train.output_dir. See recipes/configs/text_audio_classification.yaml.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from multimodal.build import process_state, run_supervised, summarize  # noqa: E402
from multimodal.config import ConfigError, parse_cli  # noqa: E402

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "text_audio_classification.yaml")


def main(argv: list[str] | None = None) -> dict:
    """Parse ``[--config FILE] [key=value ...]``, train, evaluate, write outputs; returns the metrics."""
    try:
        cfg = parse_cli(argv, DEFAULT_CONFIG)
    except ConfigError as err:
        raise SystemExit(f"config error: {err}") from None
    metrics = run_supervised(cfg)
    if process_state().is_main_process:
        print(summarize(metrics))
        print(f"outputs in {os.path.abspath(cfg.train.output_dir)}")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
