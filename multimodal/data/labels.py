"""Label vocabularies: names <-> ids, saved as ``labels.json`` with the model."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from multimodal.files import write_json


@dataclass
class LabelVocab:
    """Label names <-> ids for single-/multi-label tasks; regression keeps `names` as target names."""

    names: list[str]
    task: str = "single_label"

    def __post_init__(self) -> None:
        self.names = [str(n) for n in self.names]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"label names must be unique, got {self.names}")
        self._index = {n: i for i, n in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: Any) -> bool:
        return str(name) in self._index

    def encode(self, name: Any) -> int:
        """Id of one label name."""
        return self._index[str(name)]

    @classmethod
    def from_labels(cls, labels: Sequence[Any], task: str) -> LabelVocab:
        """Vocabulary of the distinct labels, sorted numerically if all are integers, else as strings."""
        flat: set[str] = set()
        for value in labels:
            if task == "multi_label":
                flat.update(str(v) for v in value)
            else:
                flat.add(str(value))
        try:
            names = sorted(flat, key=lambda s: (0, int(s), s))
        except ValueError:
            names = sorted(flat)
        return cls(names, task)

    def save(self, path: str) -> None:
        """Write ``{"task": ..., "labels": [...]}`` as JSON."""
        write_json(path, {"task": self.task, "labels": self.names})

    @classmethod
    def load(cls, path: str) -> LabelVocab:
        """Read a vocabulary written by `save` (or a plain JSON list of names)."""
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, list):
            return cls(data)
        return cls(data["labels"], data.get("task", "single_label"))
