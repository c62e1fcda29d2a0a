"""Export a trained model as graphs that run without this package's model code.

A fused classifier (`MultimodalModel`) becomes one graph: every modality's preprocessed inputs plus a
``<modality>.present`` flag in, ``logits`` out. A two-tower `DualEncoder` becomes one graph per tower:
that modality's inputs in, the normalised ``embedding`` out. Inputs are named ``<modality>.<key>`` after the
keys of the encoder's own preprocessor; the batch axis is dynamic, and so is every other axis the
preprocessor varies with the input (text length, HF audio length), found by preprocessing two probe batches.

Formats: ``onnx`` (`torch.onnx.export` with the dynamo exporter, which also converts the log-mel STFT of
audio-mel encoders) and ``torch-export`` (`torch.export.save`, a ``.pt2`` program). Beside the graphs go
``deploy.json`` (inputs, outputs, labels, task, versions, the measured export error) and the preprocessing as
JSON plus tokenizer files (`multimodal.deploy.describe`), which `multimodal.deploy.runtime.preprocess` rebuilds.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, Optional, Union

import torch
from torch import nn

from multimodal.deploy.describe import describe_encoder
from multimodal.deploy.errors import DeployError
from multimodal.deploy.example_inputs import example_batches
from multimodal.deploy.loading import load_source_model
from multimodal.deploy.runtime import (
    DEPLOY_CONFIG,
    DEPLOY_FORMAT_VERSION,
    FORMATS,
    package_versions,
    staged_folder,
)
from multimodal.deploy.verify import verify_export
from multimodal.files import write_text
from multimodal.models.base import EncoderModel
from multimodal.models.dual import DualEncoder
from multimodal.models.fused import MultimodalModel

GRAPH_SUFFIX = {"onnx": ".onnx", "torch-export": ".pt2"}


class GraphLayout:
    """The flat inputs of one graph: ``(modality, key)`` per tensor, in order, and their dynamic axes."""

    def __init__(self, model: EncoderModel, modalities: list[str], with_presence: bool) -> None:
        self.modalities, self.with_presence = list(modalities), with_presence
        self.keys: list[tuple[str, str]] = []
        self.examples: list[torch.Tensor] = []
        self.dynamic: list[dict[int, str]] = []
        for m in self.modalities:
            probe_a, probe_b = example_batches(m)
            pre = model.encoders[m].get_preprocessor(train=False)
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


class FusedGraph(nn.Module):
    """A `MultimodalModel` as a function of flat tensors: inputs and presence flags -> logits."""

    def __init__(self, model: MultimodalModel, layout: GraphLayout) -> None:
        super().__init__()
        self.model, self.layout = model, layout

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        inputs, present = self.layout.rebuild(tensors)
        return self.model(inputs=inputs, present=present).logits


class TowerGraph(nn.Module):
    """One tower of a `DualEncoder` as a function of flat tensors -> normalised embeddings."""

    def __init__(self, model: DualEncoder, modality: str, layout: GraphLayout) -> None:
        super().__init__()
        self.model, self.modality, self.layout = model, modality, layout

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        inputs, _ = self.layout.rebuild(tensors)
        return self.model.encode(self.modality, inputs[self.modality])


def _dynamic_shapes(layout: GraphLayout, named: bool = True) -> tuple:
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


def _write_graph(graph: nn.Module, layout: GraphLayout, path: str, fmt: str, output_name: str, opset: int) -> None:
    args = tuple(layout.examples)
    with torch.no_grad(), warnings.catch_warnings():
        # the exporter notes each shared axis name once per input ("will not be used, since it shares ...")
        warnings.filterwarnings("ignore", message=r".*axis name.*shares the same shape constraints.*")
        if fmt == "onnx":
            program = torch.onnx.export(graph, args, dynamo=True, dynamic_shapes=_dynamic_shapes(layout),
                                        input_names=layout.names, output_names=[output_name], opset_version=opset,
                                        external_data=False, verbose=False)
            program.save(path, external_data=False)
        else:
            program = torch.export.export(graph, args, dynamic_shapes=_dynamic_shapes(layout, named=False))
            torch.export.save(program, path)


def _graphs(model: EncoderModel) -> dict[str, tuple[nn.Module, GraphLayout, str]]:
    """name -> (graph module, layout, output name): one ``model`` graph, or one per tower."""
    if isinstance(model, MultimodalModel):
        if model.head is None:
            raise DeployError("the model has no task head: nothing to predict (export a model trained with a task)")
        layout = GraphLayout(model, model.modalities, with_presence=True)
        return {"model": (FusedGraph(model, layout).eval(), layout, "output.logits")}
    if isinstance(model, DualEncoder):
        out = {}
        for m in model.modalities:
            layout = GraphLayout(model, [m], with_presence=False)
            out[m] = (TowerGraph(model, m, layout).eval(), layout, "output.embedding")
        return out
    raise DeployError(f"export knows MultimodalModel and DualEncoder, not {type(model).__name__}")


def export_model(model: EncoderModel, output: Union[str, os.PathLike], fmt: str = "onnx",
                 labels: Optional[list[str]] = None, opset: int = 18, source: Optional[dict] = None,
                 verify: bool = True) -> dict[str, Any]:
    """Write `model` as an exported folder (graphs + ``deploy.json`` + preprocessing files); returns deploy.json.

    With `verify`, the exported graphs are run on fresh inputs (other batch sizes, a missing modality) against
    the PyTorch model, and the largest absolute difference is recorded in ``deploy.json["verification"]``.
    """
    if fmt not in FORMATS:
        raise DeployError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    output = os.fspath(output)
    model = model.eval().cpu()
    with staged_folder(output, ".export-") as tmp:
        preprocessing = {m: describe_encoder(enc, tmp, m) for m, enc in model.encoders.items()}
        graphs: dict[str, Any] = {}
        for name, (graph, layout, out_name) in _graphs(model).items():
            filename = name + GRAPH_SUFFIX[fmt]
            _write_graph(graph, layout, os.path.join(tmp, filename), fmt, out_name, opset)
            graphs[name] = {"file": filename, "inputs": layout.describe(), "outputs": [out_name],
                            "modalities": layout.modalities}
        head = model.head
        manifest: dict[str, Any] = {
            "format": fmt, "format_version": DEPLOY_FORMAT_VERSION, "model_type": model.model_type,
            "task": head.label_type if isinstance(model, MultimodalModel) else "retrieval",
            "labels": list(labels) if labels is not None else None, "modalities": model.modalities,
            "graphs": graphs, "preprocessing": preprocessing, "opset": opset if fmt == "onnx" else None,
            "versions": package_versions(), "source": source or {"config": model.get_config()},
            "quantization": None,
        }
        if isinstance(model, DualEncoder):
            manifest["embed_dim"] = model.embed_dim
            manifest["logit_scale"] = float(model.logit_scale.detach().exp())
        write_text(os.path.join(tmp, DEPLOY_CONFIG), json.dumps(manifest, indent=2))
        if verify:
            manifest["verification"] = verify_export(model, tmp)
            write_text(os.path.join(tmp, DEPLOY_CONFIG), json.dumps(manifest, indent=2))
    return manifest


def export_folder(model_dir: str, output: str, fmt: str = "onnx", opset: int = 18, verify: bool = True,
                  trust_remote_code: bool = False) -> dict[str, Any]:
    """Export the model saved in `model_dir` (``save_pretrained``) with its ``labels.json``; returns deploy.json."""
    model, labels, config = load_source_model(model_dir, trust_remote_code=trust_remote_code)
    source = {"model_dir": os.path.abspath(model_dir), "config": config}
    return export_model(model, output, fmt, labels=labels, opset=opset, source=source, verify=verify)
