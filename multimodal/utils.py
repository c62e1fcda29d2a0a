"""Deprecated: each helper moved to its concern: `multimodal.data.batches.to_device`, `multimodal.files`
(``write_text``, ``write_json``), `multimodal.config.merge.deep_merge`,
`multimodal.training.accelerator.process_state`."""

from multimodal import files
from multimodal.config import merge
from multimodal.data import batches
from multimodal.deprecation import moved
from multimodal.training import accelerator

__getattr__ = moved(__name__, files, {
    "to_device": (batches.to_device, "multimodal.data.batches.to_device (or multimodal.to_device)"),
    "deep_merge": (merge.deep_merge, "multimodal.config.merge.deep_merge"),
    "process_state": (accelerator.process_state, "multimodal.training.accelerator.process_state"),
})
