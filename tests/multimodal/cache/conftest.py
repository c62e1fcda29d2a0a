"""Fixtures shared by the feature-cache tests."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture()
def images(tmp_path) -> list[str]:
    """Five small grey PNG files (seeded noise), by path."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths
