"""Few-shot and zero-shot classification with a two-tower model: a classifier head started from class prompts.

    python recipes/image_text_retrieval.py                                # first: the two-tower model
    python recipes/few_shot_classification.py                             # 4 shots per class, prompt-initialised head
    python recipes/few_shot_classification.py data.shots_per_class=1 model.classifier_init=random
    python recipes/few_shot_classification.py train.epochs=0              # zero-shot: the prompt head untrained

Writes the best model (save_pretrained), metrics.json, report.md, config.yaml, labels.json, splits/ and
training_curves.png to train.output_dir. See recipes/configs/few_shot_classification.yaml.
"""

from __future__ import annotations

import os
import sys

from multimodal.tasks import recipe_main

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "few_shot_classification.yaml")


def main(argv: list[str] | None = None) -> dict:
    """Parse ``[--config FILE] [key=value ...]``, train, evaluate, write outputs; returns the metrics."""
    return recipe_main(DEFAULT_CONFIG, argv)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1:])
