"""Check an exported folder against the PyTorch model it came from, on inputs other than the ones export traced with:
the graphs alone (same preprocessed tensors) and end to end (each side's own preprocessing)."""

from __future__ import annotations

from typing import Any

import numpy as np

from multimodal.deploy.backends import TorchBackend
from multimodal.deploy.example_inputs import example_batches
from multimodal.deploy.runtime import ExportedModel
from multimodal.models.base import EncoderModel


def _batches(modalities: list[str]) -> list[dict[str, list]]:
    """A batch of 3 with every modality, one of 1, and (with 2+ modalities) one where each row misses one."""
    full = {m: example_batches(m)[1] for m in modalities}
    out = [full, {m: v[:1] for m, v in full.items()}]
    if len(modalities) > 1:
        out.append({m: [None if (r % len(modalities)) == i else s for r, s in enumerate(v)]
                    for i, (m, v) in enumerate(full.items())})
    return out


def _numpy(inputs: dict) -> dict:
    return {k: v.numpy() if hasattr(v, "numpy") else v for k, v in inputs.items()}


def verify_export(model: EncoderModel, folder: str, trust_remote_code: bool = True) -> dict[str, Any]:
    """Largest absolute differences, exported vs PyTorch: ``graph_max_abs_diff`` (same inputs) and
    ``end_to_end_max_abs_diff`` (each side's own preprocessing), over the batches of `_batches`."""
    torch_side = TorchBackend(model)
    exported = ExportedModel(folder, trust_remote_code=trust_remote_code)
    graph_diff = e2e_diff = 0.0
    for batch in _batches(model.modalities):
        if exported.model_type == "fused":
            present = {m: np.array([s is not None for s in v]) for m, v in batch.items()}
            t_in = {m: torch_side.preprocess(m, v) for m, v in batch.items()}
            ref = torch_side.logits(t_in, present)
            same = exported.logits({m: _numpy(d) for m, d in t_in.items()}, present)
            own = exported.logits({m: exported.preprocess(m, v) for m, v in batch.items()}, present)
            graph_diff = max(graph_diff, float(np.abs(same - ref).max()))
            e2e_diff = max(e2e_diff, float(np.abs(own - ref).max()))
        else:
            for m, values in batch.items():
                values = [v for v in values if v is not None]
                t_in = torch_side.preprocess(m, values)
                ref = torch_side.embed(m, t_in)
                graph_diff = max(graph_diff, float(np.abs(exported.embed(m, _numpy(t_in)) - ref).max()))
                e2e_diff = max(e2e_diff, float(np.abs(exported.embed(m, exported.preprocess(m, values)) - ref).max()))
    return {"graph_max_abs_diff": graph_diff, "end_to_end_max_abs_diff": e2e_diff,
            "batches": [len(next(iter(b.values()))) for b in _batches(model.modalities)]}
