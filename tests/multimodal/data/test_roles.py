"""Column roles inferred from a manifest's values (multimodal-train --data): each role, the task from the
label, the refusal of ambiguous columns naming the option that settles them, and a typo'd --label."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from multimodal.data.manifest import DataError
from multimodal.data.roles import infer_columns


@pytest.fixture
def media(tmp_path):
    """Four PNGs and four WAVs next to the manifest (their relative paths)."""
    (tmp_path / "img").mkdir()
    (tmp_path / "wav").mkdir()
    for i in range(4):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img" / f"{i}.png")
        sf.write(tmp_path / "wav" / f"{i}.wav", np.zeros(800, np.float32), 16000)
    return tmp_path


def _rows(n=8, **columns):
    return [{name: make(i) for name, make in columns.items()} for i in range(n)]


def test_every_role_is_inferred_from_the_values(media):
    rows = _rows(
        id=lambda i: f"item-{i:03d}",
        caption=lambda i: f"a photo of thing number {i}",
        picture=lambda i: f"img/{i % 4}.png",
        clip=lambda i: f"wav/{i % 4}.wav",
        brand=lambda i: ["acme", "globex"][i % 2],
        price=lambda i: 3.5 * i,
        group=lambda i: i // 2,
        split=lambda i: ["train", "train", "val", "test"][i % 4],
        label=lambda i: ["good", "bad"][i % 2],
    )
    inf = infer_columns(rows, str(media / "train.csv"), "label")
    roles = {r.column: r.role for r in inf.roles}
    assert roles == {"label": "label", "id": "ignored", "caption": "text", "picture": "image", "clip": "audio",
                     "brand": "ignored", "price": "ignored", "group": "group", "split": "split"}
    assert inf.modalities == ["text", "image", "audio"] and inf.task == "single_label"
    assert inf.data_config() == {"text_column": "caption", "image_column": "picture", "audio_column": "clip",
                                 "label_column": "label", "group_column": "group", "split_column": "split"}
    printed = "\n".join(inf.lines())
    assert "picture  image" in printed and "identifier" in printed and "task: single_label" in printed


def test_the_label_values_choose_the_task(media):
    base = {"caption": lambda i: f"some words about item {i}"}
    cases = [({"label": lambda i: i % 3}, "single_label"),  # few distinct integers: classes
             ({"label": lambda i: str(i % 3)}, "single_label"),  # the same read from a CSV
             ({"label": lambda i: 0.25 * i}, "regression"),
             ({"label": lambda i: i}, "single_label")]
    for extra, task in cases:
        assert infer_columns(_rows(**base, **extra), str(media / "m.csv"), "label").task == task, extra
    many = _rows(40, **base, label=lambda i: i)  # 40 distinct integers: a numeric target
    assert infer_columns(many, str(media / "m.csv"), "label").task == "regression"
    assert infer_columns(many, str(media / "m.csv"), "label", task="single_label").task == "single_label"


def test_short_text_is_used_only_when_no_free_text_exists(media):
    rows = _rows(name=lambda i: f"widget{i}x y", label=lambda i: i % 2)
    assert infer_columns(rows, str(media / "m.csv"), "label").column("text") == "name"
    rows = _rows(name=lambda i: f"widget{i}x y", text=lambda i: f"a long description of widget {i}",
                 label=lambda i: i % 2)
    inf = infer_columns(rows, str(media / "m.csv"), "label")
    assert inf.column("text") == "text" and "longer text column" in next(r.reason for r in inf.roles if r.column == "name")


def test_ambiguous_columns_are_refused_naming_the_override(media):
    rows = _rows(title=lambda i: f"the title of item {i} here", body=lambda i: f"a body text for item {i}",
                 label=lambda i: i % 2)
    with pytest.raises(DataError, match=r"columns 'title', 'body' could each be the text column; choose one with "
                                        r"--text-column NAME"):
        infer_columns(rows, str(media / "m.csv"), "label")
    inf = infer_columns(rows, str(media / "m.csv"), "label", {"text": "body"})
    assert inf.column("text") == "body" and {r.column: r.role for r in inf.roles}["title"] == "ignored"
    two_images = _rows(front=lambda i: f"img/{i % 4}.png", back=lambda i: f"img/{(i + 1) % 4}.png",
                       label=lambda i: i % 2)
    with pytest.raises(DataError, match="--image-column"):
        infer_columns(two_images, str(media / "m.csv"), "label")
    assert infer_columns(two_images, str(media / "m.csv"), "label", {"image": "back"}).column("image") == "back"
    mixed = _rows(thing=lambda i: f"img/{i % 4}.png" if i % 4 else "a few plain words", label=lambda i: i % 2)
    with pytest.raises(DataError, match=r"column 'thing' mixes image file names with other values \(75% are file "
                                        r"names\); name its role with --image-column"):
        infer_columns(mixed, str(media / "m.csv"), "label")


def test_paths_that_do_not_exist_and_tables_without_inputs_are_refused(media):
    missing = _rows(photo=lambda i: f"elsewhere/{i}.jpg", label=lambda i: i % 2)
    with pytest.raises(DataError, match=r"column 'photo' holds image file names, but none of the first 8 exists "
                                        r"relative to .*; paths in a manifest are relative to its folder"):
        infer_columns(missing, str(media / "m.csv"), "label")
    numbers = _rows(x=lambda i: i * 0.5, label=lambda i: i % 2)
    with pytest.raises(DataError, match=r"no column of .*m.csv looks like text, image paths or audio paths "
                                        r"\(x: numbers .*\); name one with --text-column"):
        infer_columns(numbers, str(media / "m.csv"), "label")
    both = _rows(text=lambda i: f"the words for item {i}", label=lambda i: i % 2)
    with pytest.raises(DataError, match="no column"):
        infer_columns(both, str(media / "m.csv"), "label", {"text": "none"})


def test_a_typo_in_a_column_option_gets_did_you_mean(media):
    rows = _rows(caption=lambda i: f"some words about item {i}", label=lambda i: i % 2)
    with pytest.raises(DataError, match=r"--label 'lable' is not a column of .*m.csv; did you mean 'label'\? "
                                        r"\(columns: caption, label\)"):
        infer_columns(rows, str(media / "m.csv"), "lable")
    with pytest.raises(DataError, match=r"--text-column 'Caption' .*did you mean 'caption'\?"):
        infer_columns(rows, str(media / "m.csv"), "label", {"text": "Caption"})
