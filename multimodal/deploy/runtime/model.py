"""Run an exported folder: the graphs through ONNX Runtime (or a saved ``torch.export`` program, which needs
torch) and the preprocessing rebuilt from JSON (`multimodal.deploy.runtime.preprocess`); no model code of this
package runs, and nothing here imports torch unless the folder holds a ``torch.export`` program."""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from multimodal.deploy.errors import DeployError
from multimodal.deploy.runtime.folder import read_deploy_config
from multimodal.deploy.runtime.preprocess import NumpyPreprocessor, build_preprocessor

NUMPY_DTYPES = {"int64": np.int64, "int32": np.int32, "uint8": np.uint8, "bool": np.bool_, "float32": np.float32,
                "float16": np.float16}


def onnx_session(path: str, num_threads: Optional[int] = None) -> Any:
    """A CPU ONNX Runtime session with full graph optimisation (and `num_threads` intra-op threads if given)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if num_threads:
        options.intra_op_num_threads = int(num_threads)
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


class ExportedModel:
    """An exported folder, ready to predict: `preprocess`, `logits` (fused classifier) and `embed` (towers).

    ``torch-export`` programs are unpickled by `torch.export.load`, which can run code: they load only with
    ``trust_remote_code=True``. ONNX graphs run no Python code and load by default.
    """

    def __init__(self, directory: str, num_threads: Optional[int] = None, trust_remote_code: bool = False) -> None:
        self.directory = os.fspath(directory)
        self.config = read_deploy_config(self.directory)
        self.format = self.config["format"]
        if self.format == "torch-export" and not trust_remote_code:
            raise DeployError(f"{self.directory}: a torch.export program (.pt2) is loaded with pickle, which can run "
                              "code; pass trust_remote_code=True (--trust-remote-code) if you trust the folder, or "
                              "export with --format onnx")
        if self.format not in ("onnx", "torch-export"):
            raise DeployError(f"{self.directory}: unknown format {self.format!r}")
        self.modalities: list[str] = list(self.config["modalities"])
        self.model_type: str = self.config["model_type"]
        self.task: str = self.config["task"]
        self.labels: Optional[list[str]] = self.config.get("labels")
        self.preprocessors: dict[str, NumpyPreprocessor] = {
            m: build_preprocessor(spec, self.directory) for m, spec in self.config["preprocessing"].items()}
        self.num_threads = num_threads
        self._runners: dict[str, Any] = {}
        for name in self.config["graphs"]:
            self._runner(name)  # load every graph now, so a broken folder fails at load time

    # -------------------------------------------------------------------------------------------- graphs
    def _runner(self, name: str) -> Any:
        if name not in self._runners:
            graph = self.config["graphs"][name]
            path = os.path.join(self.directory, graph["file"])
            if not os.path.isfile(path):
                raise DeployError(f"graph file {path} not found: the exported folder is incomplete")
            if self.format == "onnx":
                self._runners[name] = onnx_session(path, self.num_threads)
            else:
                import torch

                self._runners[name] = torch.export.load(path).module()
        return self._runners[name]

    def run(self, name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run graph `name` on named inputs (cast to the dtypes the graph declares); returns its one output."""
        graph = self.config["graphs"][name]
        arrays = []
        for spec in graph["inputs"]:
            if spec["name"] not in feeds:
                raise DeployError(f"graph {name!r} needs input {spec['name']!r}")
            arrays.append(np.ascontiguousarray(feeds[spec["name"]], dtype=NUMPY_DTYPES[spec["dtype"]]))
        runner = self._runner(name)
        if self.format == "onnx":
            wanted = {i.name for i in runner.get_inputs()}
            feed = {s["name"]: a for s, a in zip(graph["inputs"], arrays) if s["name"] in wanted}
            return runner.run(None, feed)[0]
        import torch

        with torch.no_grad():
            return runner(*[torch.from_numpy(a) for a in arrays]).numpy()

    # -------------------------------------------------------------------------------------------- backend API
    def preprocess(self, modality: str, samples: list) -> dict[str, np.ndarray]:
        """One modality's raw samples (None for absent ones) -> the graph's input arrays."""
        return self.preprocessors[modality](samples)

    def logits(self, inputs: dict[str, dict[str, np.ndarray]], present: dict[str, np.ndarray]) -> np.ndarray:
        """Fused classifier: logits [B, C] from every modality's preprocessed inputs and presence flags."""
        feeds = {f"{m}.{k}": v for m, d in inputs.items() for k, v in d.items()}
        feeds.update({f"{m}.present": np.asarray(p, dtype=np.bool_) for m, p in present.items()})
        return np.asarray(self.run("model", feeds), dtype=np.float32)

    def embed(self, modality: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Two-tower model: normalised embeddings [B, D] of one modality."""
        if modality not in self.config["graphs"]:
            raise DeployError(f"the exported model has no {modality!r} tower; towers are {sorted(self.config['graphs'])}")
        return np.asarray(self.run(modality, {f"{modality}.{k}": v for k, v in inputs.items()}), dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        """What `/metadata` and the predict CLI report about this backend."""
        return {"backend": "onnxruntime" if self.format == "onnx" else "torch.export", "format": self.format,
                "quantization": self.config.get("quantization"), "exported_with": self.config.get("versions")}
