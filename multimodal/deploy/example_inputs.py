"""Example raw inputs per modality: export traces the graphs and sizes their dynamic axes with them, and
verification reuses them (not to be confused with the linear probe of `multimodal.training`)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from multimodal.deploy.errors import DeployError


def example_batches(modality: str) -> tuple[list, list]:
    """Two raw batches that differ in size and in every variable length (text length, clip length)."""
    rng = np.random.default_rng(0)
    if modality == "text":
        return ["a", "a much longer text than the first one, with many more words in it"], ["b c", "d", "e f g"]
    if modality == "image":
        def picture(h: int, w: int) -> Image.Image:
            return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        return [picture(48, 40), picture(70, 90)], [picture(33, 33), picture(64, 50), picture(20, 80)]
    if modality == "audio":
        def clip(seconds: float) -> tuple[np.ndarray, int]:
            return (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000
        return [clip(0.6), clip(1.3)], [clip(0.4), clip(0.4), clip(0.4)]
    raise DeployError(f"export has no example inputs for the {modality!r} modality (it knows text, image, audio)")
