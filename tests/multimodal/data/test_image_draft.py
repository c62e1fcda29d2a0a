"""JPEGs decoded at reduced scale down to the eval resize give the same pixels as a full decode, within rounding."""

from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.data
import timm.data
from PIL import Image

from encoders.image import ImagePreprocessor
from multimodal.data.media import DEFAULT_LIMITS, image_draft_side, load_image


def _preprocessor(train: bool) -> ImagePreprocessor:
    transform = timm.data.create_transform(input_size=(3, 112, 112), crop_pct=0.875, is_training=train,
                                           use_prefetcher=True)
    return ImagePreprocessor(transform, (3, 112, 112))


@pytest.mark.parametrize("photo", ["hubble_deep_field", "astronaut"])  # real photographs, shipped with scikit-image
def test_drafted_jpeg_matches_the_full_decode_after_the_resize(photo):
    buffer = io.BytesIO()
    Image.fromarray(getattr(skimage.data, photo)()).save(buffer, "JPEG", quality=90)
    cell = {"bytes": buffer.getvalue()}
    preprocess = _preprocessor(train=False)
    side = image_draft_side({"image": preprocess})
    assert side == 2 * 128  # twice the eval resize (112 / 0.875)
    full = load_image(cell)
    drafted = load_image(cell, limits=DEFAULT_LIMITS.with_draft(side))
    assert min(drafted.size) < min(full.size) and min(drafted.size) >= side  # decoded at 1/2 scale, no smaller
    diff = np.abs(preprocess([full])["pixel_values"].numpy().astype(float)
                  - preprocess([drafted])["pixel_values"].numpy().astype(float))
    assert diff.mean() < 1.0 and np.quantile(diff, 0.99) <= 6  # grey levels of 255


def test_no_draft_for_training_transforms_or_other_formats(tmp_path):
    assert image_draft_side({"image": _preprocessor(train=True)}) is None  # random crops may need every pixel
    assert image_draft_side({}) is None
    path = tmp_path / "photo.png"
    Image.fromarray(skimage.data.astronaut()).save(path)
    assert load_image(str(path), limits=DEFAULT_LIMITS.with_draft(128)).size == (512, 512)  # PNG: no DCT scaling
