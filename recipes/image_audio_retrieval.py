"""Image-audio retrieval: contrastive training of an image and an audio tower, no text involved.

    accelerate launch recipes/image_audio_retrieval.py                                # built-in demo
    accelerate launch recipes/image_audio_retrieval.py --config my.yaml train.epochs=3
    python recipes/image_audio_retrieval.py --config my.yaml model.freeze_encoders=false

Data: one row per matching (image, audio) pair. The built-in demo pairs handwritten digits with touch-tone
clips of the same digit. Writes model/ (a DualEncoder), metrics.json, report.md (+ PNG plots, report.html),
splits/ and config.yaml. See recipes/configs/image_audio_retrieval.yaml.
"""

from __future__ import annotations

import os
import sys

from multimodal.tasks import recipe_main

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "image_audio_retrieval.yaml")


def main(argv: list[str] | None = None) -> dict:
    """Parse ``[--config FILE] [key=value ...]``, train, evaluate, write outputs; returns the metrics."""
    return recipe_main(DEFAULT_CONFIG, argv)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1:])
