"""Image-text retrieval: contrastive (CLIP-style) training of a text and an image tower.

    accelerate launch recipes/image_text_retrieval.py                                # built-in demo
    accelerate launch recipes/image_text_retrieval.py --config my.yaml train.epochs=3
    python recipes/image_text_retrieval.py --config my.yaml model.freeze_encoders=[image]

Data: one row per (image, caption) pair; rows sharing an image are one item with several captions.
Freeze towers with model.freeze_encoders (true: projections only, [image]: LiT, false: everything).
Writes model/ (a DualEncoder), metrics.json, report.md (+ PNG plots, report.html), splits/ and config.yaml.
See recipes/configs/image_text_retrieval.yaml.
"""

from __future__ import annotations

import os
import sys

from multimodal.tasks import recipe_main

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "image_text_retrieval.yaml")


def main(argv: list[str] | None = None) -> dict:
    """Parse ``[--config FILE] [key=value ...]``, train, evaluate, write outputs; returns the metrics."""
    return recipe_main(DEFAULT_CONFIG, argv)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1:])
