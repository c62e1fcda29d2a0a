"""Built-in demo data sets, generated locally (no downloads) and registered by name for ``data.demo``.

`make_demo(name)` writes the files once into ``<root>/<name>-n<size>-s<seed>-<version>/`` (root: ``data.demo_dir``,
else ``$MULTIMODAL_CACHE/demo`` or ``~/.cache/multimodal-finetune/demo``) with a ``manifest.csv`` whose
``split`` column comes from `assign_splits` (by item for the pair sets). Generation happens in a temporary
folder that is renamed when complete, so several processes may call it at once. A demo also carries the few
config values that only make sense for its data (clip length, image size): `config_defaults`, applied
under the user's config when that demo is selected.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from encoders.registry import Registry
from multimodal.data import demo_classification, demo_pairs
from multimodal.data.partition import assign_splits

VERSION = "v3"


@dataclass(frozen=True)
class Demo:
    """A generated data set: `write(folder, size, seed) -> rows`, its split fractions and config defaults."""

    name: str
    description: str
    write: Callable[[str, int, int], list[dict]]
    default_size: int
    task: str
    val_fraction: float
    test_fraction: float
    group_column: Optional[str] = None
    config_defaults: dict[str, Any] = field(default_factory=dict)


DEMOS: Registry[Demo] = Registry("demo")  # name -> Demo; ``data.demo`` selects one


def register_demo(demo: Demo, *, override: bool = False) -> Demo:
    """Add a demo under `demo.name`; an equal demo again is a no-op, another one under a taken name raises
    `DuplicateNameError` (a ValueError) unless `override`."""
    return DEMOS.register(demo.name, demo, override=override)


def get_demo(name: str) -> Demo:
    """The demo registered as `name` (`UnknownNameError`, a KeyError, naming the known ones)."""
    return DEMOS.get(name)


def list_demos(pattern: str = "*") -> list[Demo]:
    """Every registered demo matching `pattern`, by name."""
    return [e.obj for e in sorted(DEMOS.entries(pattern), key=lambda e: e.name)]


def default_demo_root() -> str:
    """``$MULTIMODAL_CACHE/demo`` or ``~/.cache/multimodal-finetune/demo``."""
    base = os.environ.get("MULTIMODAL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "multimodal-finetune")
    return os.path.join(base, "demo")


def make_demo(name: str, size: Optional[int] = None, root: Optional[str] = None, seed: int = 0) -> str:
    """Generate (once) the demo `name` and return the path of its ``manifest.csv`` (with a ``split`` column)."""
    demo = get_demo(name)
    size = int(size or demo.default_size)
    if size < 20:
        raise ValueError(f"demo {name!r}: size must be at least 20, got {size}")
    root = root or default_demo_root()
    folder = os.path.join(root, f"{name}-n{size}-s{seed}-{VERSION}")
    manifest = os.path.join(folder, "manifest.csv")
    if os.path.exists(manifest):
        return manifest
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=root)
    try:
        staging = os.path.join(tmp, "data")
        os.makedirs(staging)
        rows = demo.write(staging, size, seed)
        groups = [str(r[demo.group_column]) for r in rows] if demo.group_column else [str(i) for i in range(len(rows))]
        units = list(dict.fromkeys(groups))
        assignment, _ = assign_splits(len(units), None, demo.val_fraction, demo.test_fraction, seed)
        split_of = dict(zip(units, assignment))
        with open(os.path.join(staging, "manifest.csv"), "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=[*rows[0], "split"])
            writer.writeheader()
            writer.writerows({**r, "split": split_of[g]} for r, g in zip(rows, groups))
        try:
            os.rename(staging, folder)
        except OSError:
            if not os.path.exists(manifest):  # not another process winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


register_demo(Demo(
    "text_image", "handwritten digits + captions naming an ink colour; the label needs both (4 classes)",
    demo_classification.write_text_image, 480, "single_label", 0.15, 0.15,
))
register_demo(Demo(
    "text_audio", "synthesized tones/chirps/noise + captions naming a time of day; the label needs both (4 classes)",
    demo_classification.write_text_audio, 480, "single_label", 0.15, 0.15,
    config_defaults={"model": {"encoder_kwargs": {"audio": {"max_seconds": 1.0}}}},  # the clips are 1 s long
))
register_demo(Demo(
    "image_text_pairs", "coloured MNIST digits, each a unique combination, with 3 captions each",
    demo_pairs.write_image_text_pairs, 240, "retrieval", 0.1, 0.2, group_column="item_id",
    config_defaults={"model": {"encoder_kwargs": {"image": {"img_size": 128}}}},  # the images are 64x64
))
register_demo(Demo(
    "audio_text_pairs", "synthesized sounds, each a unique combination, with 3 captions each",
    demo_pairs.write_audio_text_pairs, 90, "retrieval", 0.1, 0.2, group_column="item_id",
    config_defaults={"model": {"encoder_kwargs": {"audio": {"max_seconds": 1.5}}}},  # the clips are 1.5 s long
))
register_demo(Demo(
    "image_audio_pairs", "MNIST digit images paired with touch-tone clips of the same digit",
    demo_pairs.write_image_audio_pairs, 240, "retrieval", 0.1, 0.2, group_column="item_id",
    config_defaults={"model": {"encoder_kwargs": {"image": {"img_size": 128}, "audio": {"max_seconds": 1.5}}}},
))
