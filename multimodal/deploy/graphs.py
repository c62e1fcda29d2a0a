"""Encoders as graphs of flat tensors, and the writer that exports them (shared by `multimodal.deploy.export` and
the feature cache's ONNX Runtime backend, `multimodal.cache.ort`).

`GraphLayout` names a graph's inputs ``<modality>.<key>`` after the keys of each encoder's own eval-mode
preprocessor; the batch axis is dynamic, and so is every other axis the preprocessor varies with the input (text
length, HF audio length), found by preprocessing two probe batches (`example_batches`). `write_graph` writes a
module of those flat tensors as ONNX (the dynamo exporter) or as a torch.export program.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from encoders.base import Encoder
from multimodal.deploy.example_inputs import example_batches


class GraphLayout:
    """The flat inputs of one graph: ``(modality, key)`` per tensor, in order, and their dynamic axes."""

    def __init__(self, encoders: Mapping[str, Encoder], modalities: Sequence[str], with_presence: bool) -> None:
        self.modalities, self.with_presence = list(modalities), with_presence
        self.keys: list[tuple[str, str]] = []
        self.examples: list[torch.Tensor] = []
        self.dynamic: list[dict[int, str]] = []
        for m in self.modalities:
            probe_a, probe_b = example_batches(m)
            pre = encoders[m].get_preprocessor(train=False)
            a, b = pre(probe_a), pre(probe_b)
            for key in sorted(a):
                ta, tb = a[key], b[key]
                axes = {0: "batch"}
                axes.update({d: "" for d in range(1, ta.dim()) if ta.shape[d] != tb.shape[d]})  # named below
                self.keys.append((m, key))
                self.examples.append(ta)
                self.dynamic.append(axes)
        self._share_axes()
        if with_presence:
            for m in self.modalities:
                self.keys.append((m, "present"))
                self.examples.append(torch.ones(len(example_batches(m)[0]), dtype=torch.bool))
                self.dynamic.append({0: "batch"})

    def _share_axes(self) -> None:
        """Variable axes of one modality with the same probe sizes (input_ids and attention_mask) share one name."""
        seen: dict[tuple[str, int], str] = {}
        for (m, _), example, axes in zip(self.keys, self.examples, self.dynamic):
            for d in [d for d in axes if d > 0]:
                key = (m, int(example.shape[d]))
                if key not in seen:
                    count = sum(1 for k in seen if k[0] == m)
                    seen[key] = f"{m}_length" + (str(count + 1) if count else "")
                axes[d] = seen[key]

    @property
    def names(self) -> list[str]:
        """Graph input names, ``<modality>.<key>``."""
        return [f"{m}.{k}" for m, k in self.keys]

    def rebuild(self, tensors: tuple[torch.Tensor, ...]) -> tuple[dict, dict]:
        """(inputs, present) dicts from the flat tensors."""
        inputs: dict[str, dict[str, torch.Tensor]] = {}
        present: dict[str, torch.Tensor] = {}
        for (m, key), t in zip(self.keys, tensors):
            if key == "present":
                present[m] = t
            else:
                inputs.setdefault(m, {})[key] = t
        return inputs, present

    def describe(self) -> list[dict[str, Any]]:
        """JSON description of the inputs: name, modality, key, dtype, shape (axis names for dynamic axes)."""
        return [{"name": n, "modality": m, "key": k, "dtype": str(t.dtype).replace("torch.", ""),
                 "shape": [axes.get(d, int(s)) for d, s in enumerate(t.shape)]}
                for n, (m, k), t, axes in zip(self.names, self.keys, self.examples, self.dynamic)]



def dynamic_shapes(layout: GraphLayout, named: bool = True) -> tuple:
    """torch.export dynamic shapes for the flat inputs: named `Dim`s (ONNX keeps the names as axis names), or
    `Dim.DYNAMIC` (torch.export infers each axis' valid range, e.g. at most the position-embedding length)."""
    dims: dict[str, Any] = {}
    shapes = []
    for axes in layout.dynamic:
        spec = {}
        for d, name in axes.items():
            if not named:
                spec[d] = torch.export.Dim.DYNAMIC
                continue
            if name not in dims:
                dims[name] = torch.export.Dim(name, min=1) if d == 0 else torch.export.Dim(name)
            spec[d] = dims[name]
        shapes.append(spec)
    return (tuple(shapes),)  # forward(*tensors): one positional group


def write_graph(graph: nn.Module, layout: GraphLayout, path: str, fmt: str, output_names: Sequence[str],
                opset: int) -> None:
    """Write `graph` (a function of `layout`'s flat tensors) to `path` as ``onnx`` or ``torch-export``."""
    args = tuple(layout.examples)
    with torch.no_grad(), warnings.catch_warnings():
        # the exporter notes each shared axis name once per input ("will not be used, since it shares ...")
        warnings.filterwarnings("ignore", message=r".*axis name.*shares the same shape constraints.*")
        if fmt == "onnx":
            program = torch.onnx.export(graph, args, dynamo=True, dynamic_shapes=dynamic_shapes(layout),
                                        input_names=layout.names, output_names=list(output_names), opset_version=opset,
                                        external_data=False, verbose=False)
            program.save(path, external_data=False)
        else:
            program = torch.export.export(graph, args, dynamic_shapes=dynamic_shapes(layout, named=False))
            torch.export.save(program, path)
