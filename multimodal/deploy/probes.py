"""Deprecated: the export's example inputs live in `multimodal.deploy.example_inputs` (``probe_batches`` is now
``example_batches``); the old names keep working for one release with a DeprecationWarning."""

from multimodal.deprecation import relocated

__getattr__ = relocated(__name__, {"probe_batches": "multimodal.deploy.example_inputs:example_batches"})
