"""Text-audio classification: fine-tune a text and an audio encoder jointly through a fusion head.

    accelerate launch recipes/text_audio_classification.py                                # built-in demo
    accelerate launch recipes/text_audio_classification.py --config my.yaml train.epochs=3
    python recipes/text_audio_classification.py --config my.yaml model.fusion=gated

Writes the best model (save_pretrained), metrics.json, report.md, config.yaml, labels.json, splits/ and
training_curves.png to train.output_dir. See recipes/configs/text_audio_classification.yaml.
"""

from __future__ import annotations

import os
import sys

from multimodal.tasks import recipe_main

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "text_audio_classification.yaml")


def main(argv: list[str] | None = None) -> dict:
    """Parse ``[--config FILE] [key=value ...]``, train, evaluate, write outputs; returns the metrics."""
    return recipe_main(DEFAULT_CONFIG, argv)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1:])
