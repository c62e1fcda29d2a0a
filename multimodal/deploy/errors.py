"""The errors of the deploy commands and of the exported-model runtime (no torch needed to raise or catch them)."""

from __future__ import annotations

from typing import Optional


class DeployError(ValueError):
    """A model folder, export or option cannot be used as given; the message says what to do instead."""


class BadInputError(DeployError):
    """One input row cannot be predicted; the message names the row and the field (and file, if any)."""

    def __init__(self, message: str, row: Optional[int] = None, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.row, self.field = row, field
