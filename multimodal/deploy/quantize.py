"""int8 for CPU inference: dynamic quantization of an exported ONNX folder with ONNX Runtime's quantizer.

Weights of the chosen op types become int8 (one scale per tensor, or per output channel); activations are
quantized on the fly at run time. The default op types are ``MatMul`` (every linear layer of the text
encoder, the fusion and the head) and ``Gather`` (token embedding tables); convolutions stay fp32 unless
``Conv`` is listed: int8 ``ConvInteger`` was 4-7x slower than fp32 ``Conv`` in ONNX Runtime's CPU provider and
cost EfficientNet-Lite0 most of its accuracy (BENCHMARKS.md, section 8a).
The output is a new exported folder: the same preprocessing files, int8 graphs, and ``deploy.json`` with the
settings, the file sizes and the largest difference from the fp32 outputs on the verification inputs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from multimodal.deploy.errors import DeployError
from multimodal.deploy.example_inputs import example_batches
from multimodal.deploy.runtime import DEPLOY_CONFIG, ExportedModel, read_deploy_config, staged_folder
from multimodal.files import write_text

DEFAULT_OPS = ("MatMul", "Gather")


def graph_bytes(directory: str, config: Optional[dict] = None) -> int:
    """Total size of an exported folder's graph files."""
    config = config or read_deploy_config(directory)
    return sum(os.path.getsize(os.path.join(directory, g["file"])) for g in config["graphs"].values())


class _DropMessage(logging.Filter):
    """A logging filter that drops records containing `text`."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def activation_matmuls(path: str) -> list[str]:
    """Names of MatMul nodes without a constant input (attention scores and mixing): not linear layers, left fp32."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    constant = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in graph.node if n.op_type == "MatMul" and not any(i in constant for i in n.input)]


def quantize_exported(source: str, output: str, per_channel: bool = False,
                      op_types: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Write a dynamic-int8 copy of the exported ONNX folder `source` to `output`; returns its deploy.json."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    config = read_deploy_config(source)
    if config["format"] != "onnx":
        raise DeployError(f"{source}: int8 quantization needs an ONNX export (this folder is {config['format']})")
    if config.get("quantization"):
        raise DeployError(f"{source} is already quantized; quantize the fp32 export")
    ops = list(op_types or DEFAULT_OPS)
    output = os.fspath(output)
    with staged_folder(output, ".int8-") as tmp:
        graph_files = {g["file"] for g in config["graphs"].values()}
        for entry in os.listdir(source):
            src = os.path.join(source, entry)
            if entry in graph_files or entry == DEPLOY_CONFIG:
                continue
            (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, os.path.join(tmp, entry))
        quiet = _DropMessage("consider to run pre-processing before quantization")  # advice for static quantization
        logging.getLogger().addFilter(quiet)
        try:
            for name in sorted(graph_files):
                path = os.path.join(source, name)
                quantize_dynamic(path, os.path.join(tmp, name), op_types_to_quantize=ops, per_channel=per_channel,
                                 weight_type=QuantType.QInt8, nodes_to_exclude=activation_matmuls(path))
        finally:
            logging.getLogger().removeFilter(quiet)
        config = dict(config)
        config["quantization"] = {
            "method": "onnxruntime.quantization.quantize_dynamic", "weight_type": "int8", "op_types": ops,
            "per_channel": per_channel, "source": os.path.abspath(source),
            "bytes": {"fp32": graph_bytes(source, config), "quantized": graph_bytes(tmp, config)},
        }
        write_text(os.path.join(tmp, DEPLOY_CONFIG), json.dumps(config, indent=2))
        config["quantization"]["max_abs_diff_vs_fp32"] = compare_outputs(source, tmp)
        config.pop("verification", None)  # that check was for the fp32 graphs
        write_text(os.path.join(tmp, DEPLOY_CONFIG), json.dumps(config, indent=2))
    return config


def compare_outputs(reference: str, candidate: str) -> float:
    """Largest absolute output difference between two exported folders of one model, on the probe inputs."""
    ref, cand = ExportedModel(reference), ExportedModel(candidate)
    batches = {m: example_batches(m)[1] for m in ref.modalities}
    if ref.model_type == "fused":
        inputs = {m: ref.preprocess(m, v) for m, v in batches.items()}
        present = {m: np.ones(len(v), dtype=bool) for m, v in batches.items()}
        return float(np.abs(ref.logits(inputs, present) - cand.logits(inputs, present)).max())
    return max(float(np.abs(ref.embed(m, ref.preprocess(m, v)) - cand.embed(m, ref.preprocess(m, v))).max())
               for m, v in batches.items())
