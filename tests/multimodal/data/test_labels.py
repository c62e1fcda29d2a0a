"""Label vocabularies: an unknown label is named with the closest known one ("did you mean")."""

from __future__ import annotations

import pytest

from multimodal.data.labels import LabelVocab, UnknownLabelError


def test_unknown_label_suggests_the_closest_known_one():
    vocab = LabelVocab(["cat", "dog", "horse"])
    with pytest.raises(UnknownLabelError, match=r"unknown label 'hrose'; did you mean 'horse'\? \(known: \['cat', 'dog', 'horse'\]\)"):
        vocab.encode("hrose")
    with pytest.raises(KeyError):  # still a KeyError for code that catches one
        vocab.encode("hrose")
    assert vocab.closest("Dog ") == "dog"  # case and spacing slips
    assert vocab.closest("zebra") is None
    assert "did you mean" not in vocab.describe_unknown("zebra", "label")
    assert vocab.describe_unknown("Cat", "label") == (
        "unknown label 'Cat' in column 'label'; did you mean 'cat'? (known: ['cat', 'dog', 'horse'])")
    assert vocab.encode("dog") == 1


def test_a_long_vocabulary_is_shortened_in_the_message():
    vocab = LabelVocab([f"class_{i:02d}" for i in range(30)])
    message = vocab.describe_unknown("clas_07")
    assert "did you mean 'class_07'?" in message and "... 10 more" in message and "class_29" not in message
