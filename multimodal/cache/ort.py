"""The feature cache's ONNX Runtime backend (``data.feature_cache_backend``): the frozen tower exported once per cache
folder and run by onnxruntime, kept only after a parity check against PyTorch fp32.

* ``torch``: the tower runs in PyTorch (`multimodal.cache.encode.encode_batch`), as always.
* ``onnx``: the tower as the fill runs it (eval mode, its eval preprocessor's tensors in, ``pooled`` and, where the
  encoder gives them, ``tokens`` / ``mask`` out) is exported with the deploy exporter's machinery
  (`multimodal.deploy.graphs`) to ``tower.onnx`` inside the cache folder (written atomically; later fills load it,
  never export again) and run by an `onnxruntime.InferenceSession` (CPU; CUDA when the fill runs on a GPU and
  onnxruntime has it; intra-op threads = ``torch.get_num_threads()``). Before use, the first `PARITY_ITEMS` items
  of the fill go through both; ORT is kept only within `MAX_DIFF` / `MIN_COSINE`, else the fill runs in torch
  with one warning. onnxruntime missing or an export that fails: a `ConfigError` naming the option.
* ``auto``: ``onnx`` where it pays: onnxruntime importable and either the folder already holds ``tower.onnx`` or the
  fill has at least `AUTO_MIN_ITEMS` items to encode (so the export time is recovered); torch otherwise, and torch
  with one log line when the export fails.

ORT runs fp32 only: a fill in bf16 (``data.feature_cache_precision``) always runs in torch. ORT features share the
fp32 folder: parity-checked, they differ from torch fp32 by float rounding (largest differences 5e-5 to 2e-4 on
features of magnitude ~1-5), the size of the channels_last-vs-NCHW difference that already shares it and far below
the bf16 difference that gets its own folder; so a cache filled by either backend serves the other.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from encoders.base import Encoder, EncoderOutput
from multimodal.config.schema import ConfigError
from multimodal.deploy.graphs import GraphLayout, write_graph
from multimodal.files import atomic_path

log = logging.getLogger("multimodal.cache")

BACKENDS = ("auto", "torch", "onnx")
DEFAULT_BACKEND = "auto"
GRAPH_FILE = "tower.onnx"
OUTPUTS = ("pooled", "tokens", "mask")
OPSET = 18
PARITY_ITEMS = 8
"""How many of the first items of a fill run through both torch fp32 and ORT before ORT is kept."""
MAX_DIFF = 1e-3
"""Largest difference of any feature (pooled and tokens) ORT may show against torch fp32, relative to the largest
magnitude of torch's features (at least 1). Measured on real items through the packaged weights: EfficientNet-Lite0
on photos 5.2e-5 absolute (features up to 5.2: 1.0e-5 relative), audio-mel EfficientNet-Lite0 on recordings 2.0e-4
(up to 4.8: 4.1e-5), all-MiniLM-L6-v2 on captions 3.1e-5 (up to 1.1: 2.7e-5). The bound leaves 24x margin over the
largest; bf16 (relative differences of 1e-2 and more) stays far outside it."""
MIN_COSINE = 0.99999
"""Smallest cosine similarity, item by item, of ORT's and torch's pooled features (measured: 0.9999998 on all three)."""
AUTO_MIN_ITEMS = 512
"""Fewest new items a fill must have for ``auto`` to export the tower (when no ``tower.onnx`` is there yet). Measured
on the 2-core development VM (BENCHMARKS.md section 12): the export takes 13.6 s (EfficientNet-Lite0) / 15.3 s
(audio-mel EfficientNet-Lite0) and ORT saves 0.052 s per item against torch channels_last fp32, so the export is
recovered after 260 photos / 297 clips; 512 leaves 1.7x margin."""


def check_backend(backend: str, precision: str = "fp32") -> str:
    """`backend` if it is one of `BACKENDS` (and ``onnx`` only with `precision` fp32), else a ConfigError naming the
    option."""
    if backend not in BACKENDS:
        raise ConfigError(f"data.feature_cache_backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend == "onnx" and precision != "fp32":
        raise ConfigError(f"data.feature_cache_backend: onnx runs the towers in fp32, but data.feature_cache_precision "
                          f"is {precision}: set it to fp32, or the backend to auto or torch")
    return backend


def onnxruntime_available() -> bool:
    """True when onnxruntime can be imported (the ``deploy`` extra)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class FillGraph(nn.Module):
    """A frozen encoder as a function of flat preprocessed tensors -> its output as the cache stores it."""

    def __init__(self, encoder: Encoder, layout: GraphLayout, outputs: tuple[str, ...]) -> None:
        super().__init__()
        self.encoder, self.layout, self.outputs = encoder, layout, outputs

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inputs, _ = self.layout.rebuild(tensors)
        out = self.encoder(inputs[self.encoder.modality])
        return tuple(getattr(out, name) for name in self.outputs)


def export_tower(encoder: Encoder, path: str | os.PathLike) -> None:
    """Write the frozen `encoder` (eval mode, on the CPU) as an ONNX graph of its eval-preprocessed tensors to `path`
    (atomically): outputs ``pooled`` and, where the encoder gives them, ``tokens`` / ``mask``."""
    tower = copy.deepcopy(encoder).cpu().eval()
    layout = GraphLayout({tower.modality: tower}, [tower.modality], with_presence=False)
    with torch.no_grad():
        example = tower(layout.rebuild(tuple(layout.examples))[0][tower.modality])
    outputs = tuple(name for name in OUTPUTS if getattr(example, name) is not None)
    with atomic_path(path) as tmp:
        write_graph(FillGraph(tower, layout, outputs).eval(), layout, tmp, "onnx", outputs, OPSET)


class OrtTower:
    """An exported tower run by onnxruntime: preprocessed inputs (the encoder's keys) -> `EncoderOutput`."""

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu") -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.path = os.fspath(path)
        self.session = ort.InferenceSession(self.path, options, providers=providers)
        self.inputs = [i.name for i in self.session.get_inputs()]  # <modality>.<key>
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, inputs: dict[str, Any]) -> EncoderOutput:
        feeds = {}
        for name in self.inputs:
            value = inputs[name.split(".", 1)[1]]
            feeds[name] = np.ascontiguousarray(value.cpu().numpy() if isinstance(value, torch.Tensor) else value)
        got = dict(zip(self.outputs, self.session.run(None, feeds)))
        return EncoderOutput(*(torch.from_numpy(got[name]) if name in got else None for name in OUTPUTS))


def parity(reference: EncoderOutput, candidate: EncoderOutput) -> tuple[float, float]:
    """(largest absolute difference over pooled and tokens relative to the largest magnitude of `reference` (at least
    1), smallest item-wise cosine of pooled) of `candidate` against `reference`; (inf, -1) when their shapes, token
    presence or masks differ."""
    pairs = [(reference.pooled, candidate.pooled), (reference.tokens, candidate.tokens)]
    if any((a is None) != (b is None) or (a is not None and a.shape != b.shape) for a, b in pairs):
        return float("inf"), -1.0
    if (reference.mask is None) != (candidate.mask is None) or (
            reference.mask is not None and not torch.equal(reference.mask.bool(), candidate.mask.bool())):
        return float("inf"), -1.0
    present = [(a.float(), b.float()) for a, b in pairs if a is not None and a.numel()]
    scale = max([1.0] + [float(a.abs().max()) for a, _ in present])
    diff = max(float((a - b).abs().max()) for a, b in present) / scale
    cosine = torch.nn.functional.cosine_similarity(reference.pooled.float().flatten(1),
                                                   candidate.pooled.float().flatten(1), dim=1, eps=1e-12)
    return diff, float(cosine.min())


def within_tolerance(diff: float, cosine: float) -> bool:
    """True when a parity result keeps ORT (`MAX_DIFF`, `MIN_COSINE`)."""
    return diff <= MAX_DIFF and cosine >= MIN_COSINE


def open_tower(encoder: Encoder, directory: Path, backend: str, items: int,
               device: Optional[torch.device | str] = None) -> Optional[OrtTower]:
    """The ORT session for a fill of `items` on `device` (default: the encoder's) in the cache folder `directory`
    (exporting ``tower.onnx`` there when it is not yet), or None where the fill runs in torch (``torch``; ``auto``
    where it does not pay or fails)."""
    if check_backend(backend) == "torch":
        return None
    device = device if device is not None else next(encoder.parameters()).device
    path = Path(directory) / GRAPH_FILE
    if backend == "auto" and not path.exists() and items < AUTO_MIN_ITEMS:
        return None  # the export would cost more than ORT saves on this fill
    if not onnxruntime_available():
        if backend == "onnx":
            raise ConfigError("data.feature_cache_backend: onnx needs onnxruntime, which is not installed "
                              "(pip install 'multimodal-finetune[deploy]'), or set it to auto or torch")
        log.info("feature cache: %s features in torch (onnxruntime is not installed: the deploy extra would run "
                 "this fill in ONNX Runtime)", encoder.modality)
        return None
    try:
        if path.exists():
            try:
                return OrtTower(path, device)
            except Exception as err:  # noqa: BLE001 - a damaged or foreign file: export it again
                log.warning("feature cache %s: %s cannot be loaded (%s: %s); exporting it again", directory,
                            GRAPH_FILE, type(err).__name__, err)
        export_tower(encoder, path)
        return OrtTower(path, device)
    except Exception as err:  # noqa: BLE001 - any exporter or runtime failure: torch for auto, an error for onnx
        reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        if backend == "onnx":
            raise ConfigError(f"data.feature_cache_backend: onnx: the {encoder.modality} tower cannot run in ONNX "
                              f"Runtime ({reason}); set it to auto or torch") from err
        log.warning("feature cache: %s features in torch: the tower cannot run in ONNX Runtime (%s)",
                    encoder.modality, reason)
        return None
