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
from typing import Any, Optional, Union

import torch
from torch import nn

from multimodal.deploy.describe import describe_encoder
from multimodal.deploy.errors import DeployError
from multimodal.deploy.graphs import GraphLayout, write_graph
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


def _graphs(model: EncoderModel) -> dict[str, tuple[nn.Module, GraphLayout, str]]:
    """name -> (graph module, layout, output name): one ``model`` graph, or one per tower."""
    if isinstance(model, MultimodalModel):
        if model.head is None:
            raise DeployError("the model has no task head: nothing to predict (export a model trained with a task)")
        layout = GraphLayout(model.encoders, model.modalities, with_presence=True)
        return {"model": (FusedGraph(model, layout).eval(), layout, "output.logits")}
    if isinstance(model, DualEncoder):
        out = {}
        for m in model.modalities:
            layout = GraphLayout(model.encoders, [m], with_presence=False)
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
            write_graph(graph, layout, os.path.join(tmp, filename), fmt, [out_name], opset)
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
