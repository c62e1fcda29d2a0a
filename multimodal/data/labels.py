"""Label vocabularies: names <-> ids, saved as ``labels.json`` with the model."""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from multimodal.files import write_json


class UnknownLabelError(KeyError):
    """A label that is not in the vocabulary; the message names the closest known label."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


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
        """Id of one label name; an unknown name raises `UnknownLabelError` with a did-you-mean hint."""
        try:
            return self._index[str(name)]
        except KeyError:
            raise UnknownLabelError(self.describe_unknown(name)) from None

    def closest(self, name: Any) -> Optional[str]:
        """The known label most like `name` (a typo, a case or spacing slip), or None when none is close."""
        text = str(name)
        folded = {n.strip().casefold(): n for n in self.names}
        if text.strip().casefold() in folded:
            return folded[text.strip().casefold()]
        hint = difflib.get_close_matches(text, self.names, n=1, cutoff=0.6)
        return hint[0] if hint else None

    def describe_unknown(self, name: Any, column: Optional[str] = None) -> str:
        """The one-line message for a label not in the vocabulary: the value, a did-you-mean, the known labels."""
        where = f" in column {column!r}" if column else ""
        hint = self.closest(name)
        mean = f"; did you mean {hint!r}?" if hint is not None else ""
        shown = self.names if len(self.names) <= 20 else [*self.names[:20], f"... {len(self.names) - 20} more"]
        return f"unknown label {name!r}{where}{mean} (known: {shown})"

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
