"""Names that moved out of `fusion` to `multimodal.models.contrastive` (the two-tower head is not a fusion).

Each still resolves, for one release, through a module-level ``__getattr__`` with a DeprecationWarning. The
target is imported only when an old name is used, so `fusion` itself never imports `multimodal`.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

NEW_HOME = "multimodal.models.contrastive"

# old name -> name in the new home. `clip_loss` / `ClipLoss` took the scale in log space here: their aliases
# keep that meaning; the new `clip_loss` takes the exponentiated scale, as open_clip's does.
MOVED = {
    "ContrastiveHead": "ContrastiveHead",
    "DEFAULT_LOGIT_SCALE": "DEFAULT_LOGIT_SCALE",
    "MAX_LOGIT_SCALE": "MAX_LOGIT_SCALE",
    "gather_features": "gather_features",
    "clip_loss": "log_space_clip_loss",
    "ClipLoss": "LogSpaceClipLoss",
}


def moved(module: str, name: str) -> Any:
    """The object `module.name` used to be, from its new home, with a DeprecationWarning."""
    if name not in MOVED:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    target = MOVED[name]
    note = ("; this alias keeps the log-space scale, the new one takes the exponentiated scale (open_clip's "
            "convention) or log_logit_scale=") if target != name else ""
    warnings.warn(f"{module}.{name} moved to {NEW_HOME}.{name}{note}; the old name goes away in the next release",
                  DeprecationWarning, stacklevel=3)
    return getattr(importlib.import_module(NEW_HOME), target)
