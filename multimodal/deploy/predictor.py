"""`Predictor`: raw inputs in, predictions out, from a PyTorch model folder or an exported one.

    from multimodal import Predictor
    p = Predictor.from_pretrained("outputs/text_image_classification/model")      # or an exported folder
    p.predict({"text": "a digit in red ink", "image": "digit.png"})                # {"label", "score", "probabilities"}
    p.predict([{"image": pil_image}, {"text": "only a caption"}])                # any modality may be absent

Inputs per row are the cells a manifest holds: text as ``str``; images as paths, PIL images, arrays or
``{"bytes": ...}``; audio as paths, ``(waveform, sample_rate)`` tuples, ``{"array", "sampling_rate"}`` or
``{"bytes": ...}``. They are decoded by `multimodal.data.media` (the decoding training uses) and preprocessed
by the encoders' own eval preprocessors (PyTorch folders) or by their JSON description (exported folders).
Rows go through the model in batches of `batch_size`. Two-tower models give normalised embeddings per
modality (`embed`), and `index` + `search` do top-k retrieval against a gallery. No accelerate is involved.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np

from multimodal.data.limits import DEFAULT_LIMITS, MediaLimits
from multimodal.data.manifest import cell, is_missing
from multimodal.data.media import audio_window, describe, image_draft_side, load_sample
from multimodal.deploy.backends import TorchBackend
from multimodal.deploy.errors import BadInputError, DeployError
from multimodal.deploy.loading import load_source_model
from multimodal.deploy.runtime import ExportedModel, format_logits, is_exported, package_versions

Row = Mapping[str, Any]


@dataclass
class Gallery:
    """Embedded gallery entries of one modality, for `Predictor.search`."""

    modality: str
    embeddings: np.ndarray  # [N, D], L2-normalised
    ids: list[Any]

    def __len__(self) -> int:
        return len(self.ids)


class Predictor:
    """Batch prediction over a backend (`TorchBackend` or `multimodal.deploy.runtime.ExportedModel`)."""

    def __init__(self, backend: Any, batch_size: int = 32, source: Optional[str] = None,
                 limits: Optional[MediaLimits] = None) -> None:
        if batch_size < 1:
            raise DeployError(f"batch_size must be at least 1, got {batch_size}")
        self.backend, self.batch_size, self.source = backend, int(batch_size), source
        # What one input may cost to decode; audio files are decoded only as far as the model's clip, JPEGs only down
        # to twice the eval resize.
        self.limits = (limits or DEFAULT_LIMITS).with_window(audio_window(backend.preprocessors)).with_draft(
            image_draft_side(backend.preprocessors))

    @classmethod
    def from_pretrained(cls, directory: Union[str, os.PathLike], batch_size: int = 32, device: str = "cpu",
                        num_threads: Optional[int] = None, trust_remote_code: bool = False,
                        limits: Optional[MediaLimits] = None) -> Predictor:
        """Open a model folder: exported (``deploy.json``: ONNX Runtime) or PyTorch (``save_pretrained``);
        `limits` bound what one input may cost to decode (`multimodal.data.limits.MediaLimits`)."""
        directory = os.fspath(directory)
        if is_exported(directory):
            backend: Any = ExportedModel(directory, num_threads=num_threads, trust_remote_code=trust_remote_code)
        else:
            if num_threads:
                import torch

                torch.set_num_threads(int(num_threads))
            model, labels, _ = load_source_model(directory, trust_remote_code=trust_remote_code)
            backend = TorchBackend(model, labels, device=device, channels_last=True)  # loaded here: ours
        return cls(backend, batch_size=batch_size, source=os.path.abspath(directory), limits=limits)

    # ------------------------------------------------------------------------------------------ properties
    @property
    def modalities(self) -> list[str]:
        """The modalities the model takes (any of them may be absent from a row)."""
        return list(self.backend.modalities)

    @property
    def task(self) -> str:
        """single_label, multi_label, regression, or retrieval (two-tower models)."""
        return self.backend.task

    @property
    def labels(self) -> Optional[list[str]]:
        """The class names in output order (None for two-tower models or folders without labels.json)."""
        return self.backend.labels

    @property
    def is_two_tower(self) -> bool:
        """Whether predictions are embeddings (a `DualEncoder`) rather than labels."""
        return self.backend.model_type == "dual_encoder"

    def metadata(self) -> dict[str, Any]:
        """Model type, task, labels, modalities, backend and package versions."""
        return {"model_type": self.backend.model_type, "task": self.task, "labels": self.labels,
                "modalities": self.modalities, "batch_size": self.batch_size, "source": self.source,
                "limits": dataclasses.asdict(self.limits),
                **self.backend.describe(), "versions": package_versions()}

    # ------------------------------------------------------------------------------------------ decoding
    def decode(self, row: Row, index: int = 0, base_dir: Optional[str] = None, where: Optional[str] = None) -> dict:
        """One row of raw cells -> ``{modality: decoded sample or None}``; a bad cell raises `BadInputError`
        naming the row (`where`, default ``row <index>``), the field and the file."""
        where = where or f"row {index}"
        if not isinstance(row, Mapping):
            raise BadInputError(f"{where}: expected a mapping of modality -> value, got {type(row).__name__}", index)
        unknown = sorted(str(k) for k in row if k not in self.modalities)
        if unknown:
            raise BadInputError(f"{where}: unknown field(s) {unknown}; this model takes {self.modalities}", index,
                                unknown[0])
        sample: dict[str, Any] = {}
        for m in self.modalities:
            value = cell(row.get(m))
            if is_missing(value):
                sample[m] = None
                continue
            if m == "text" and not isinstance(value, str):
                raise BadInputError(f"{where}: field 'text' must be a string, got {type(value).__name__}", index, m)
            try:
                sample[m] = load_sample(m, value, base_dir, self.limits)
            except Exception as err:  # noqa: BLE001 - any failure to decode the cell makes the row bad
                raise BadInputError(f"{where}: field {m!r}{describe(value, base_dir)}: {type(err).__name__}: {err}",
                                    index, m) from err
        if all(v is None for v in sample.values()):
            raise BadInputError(f"{where}: no input given; this model takes {self.modalities}", index)
        return sample

    # ------------------------------------------------------------------------------------------ prediction
    def _preprocess(self, modality: str, values: list, rows: Sequence[int]) -> dict:
        """Preprocess a batch; if it fails, find and name the row that made it fail."""
        try:
            return self.backend.preprocess(modality, values)
        except Exception as batch_err:  # noqa: BLE001
            for r, v in zip(rows, values):
                try:
                    self.backend.preprocess(modality, [v])
                except Exception as err:  # noqa: BLE001
                    raise BadInputError(f"row {r}: field {modality!r}: {type(err).__name__}: {err}", r, modality) from err
            raise batch_err

    def predict_decoded(self, samples: Sequence[dict], rows: Optional[Sequence[int]] = None) -> list[dict]:
        """Predictions for rows already decoded by `decode`, in order (one backend call per `batch_size` rows)."""
        rows = list(rows) if rows is not None else list(range(len(samples)))
        out: list[dict] = []
        for start in range(0, len(samples), self.batch_size):
            chunk, ids = samples[start : start + self.batch_size], rows[start : start + self.batch_size]
            out.extend(self._predict_chunk(chunk, ids))
        return out

    def _predict_chunk(self, chunk: Sequence[dict], ids: Sequence[int]) -> list[dict]:
        if not self.is_two_tower:
            present = {m: np.array([s.get(m) is not None for s in chunk]) for m in self.modalities}
            inputs = {m: self._preprocess(m, [s.get(m) for s in chunk], ids) for m in self.modalities}
            return format_logits(self.backend.logits(inputs, present), self.task, self.labels)
        results: list[dict] = [{"embedding": {}} for _ in chunk]
        for m in self.modalities:
            where = [i for i, s in enumerate(chunk) if s.get(m) is not None]
            if not where:
                continue
            emb = self.backend.embed(m, self._preprocess(m, [chunk[i][m] for i in where], [ids[i] for i in where]))
            for i, vector in zip(where, emb):
                results[i]["embedding"][m] = [float(v) for v in vector]
        return results

    def predict_iter(self, rows: Iterable[Row], base_dir: Optional[str] = None, source: Optional[str] = None,
                     on_bad_row: str = "error", first_line: Optional[int] = None) -> Iterator[tuple[int, Optional[dict], Optional[str]]]:
        """``(row index, prediction, None)`` per row in input order, or ``(row index, None, message)`` for a bad row
        with ``on_bad_row="skip"`` (with "error", the first bad row raises `BadInputError`). `source` and
        `first_line` (the file line of row 0, for CSVs) make messages read ``<source>: row N (line M)``."""
        if on_bad_row not in ("error", "skip"):
            raise DeployError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
        pending: list[tuple[int, Optional[dict], Optional[str]]] = []
        for i, row in enumerate(rows):
            where = f"row {i + 1}" if source is None else f"{source}: row {i + 1}"
            if first_line is not None:
                where += f" (line {first_line + i})"
            try:
                pending.append((i, self.decode(row, i, base_dir, where), None))
            except BadInputError as err:
                if on_bad_row == "error":
                    raise
                pending.append((i, None, str(err)))
            if sum(1 for _, s, _ in pending if s is not None) >= self.batch_size:
                yield from self._flush(pending, on_bad_row)
                pending = []
        yield from self._flush(pending, on_bad_row)

    def _flush(self, pending: list, on_bad_row: str) -> Iterator[tuple[int, Optional[dict], Optional[str]]]:
        good = [(i, s) for i, s, _ in pending if s is not None]
        try:
            preds = dict(zip([i for i, _ in good], self.predict_decoded([s for _, s in good], [i for i, _ in good])))
        except BadInputError as err:
            if on_bad_row == "error" or err.row is None:
                raise
            bad_row = err.row  # one row failed preprocessing: report it, predict the rest
            rest = [(i, s, e) if i != bad_row else (i, None, str(err)) for i, s, e in pending]
            yield from self._flush(rest, on_bad_row)
            return
        for i, _, error in pending:
            yield (i, preds.get(i), error)

    def predict(self, rows: Union[Row, Sequence[Row]], base_dir: Optional[str] = None) -> Union[dict, list[dict]]:
        """Predictions for one row (a mapping) or a list of rows; a bad row raises `BadInputError` naming it."""
        if isinstance(rows, Mapping):
            return self.predict([rows], base_dir)[0]
        return [pred for _, pred, _ in self.predict_iter(rows, base_dir)]

    # ------------------------------------------------------------------------------------------ retrieval
    def embed(self, modality: str, values: Sequence[Any], base_dir: Optional[str] = None) -> np.ndarray:
        """Normalised embeddings [N, D] of `values` of one modality (two-tower models)."""
        if not self.is_two_tower:
            raise DeployError("embed() needs a two-tower (retrieval) model; this one is a classifier")
        if modality not in self.modalities:
            raise DeployError(f"the model has no {modality!r} tower; towers are {self.modalities}")
        samples = [self.decode({modality: v}, i, base_dir) for i, v in enumerate(values)]
        vectors = [p["embedding"][modality] for p in self.predict_decoded(samples)]
        return np.asarray(vectors, dtype=np.float32).reshape(len(samples), -1)

    def index(self, values: Sequence[Any], modality: str, ids: Optional[Sequence[Any]] = None,
              base_dir: Optional[str] = None) -> Gallery:
        """Embed a gallery once (ids default to the values themselves)."""
        ids = list(ids) if ids is not None else [v if isinstance(v, (str, int)) else i for i, v in enumerate(values)]
        if len(ids) != len(values):
            raise DeployError(f"index(): {len(values)} values but {len(ids)} ids")
        return Gallery(modality, self.embed(modality, values, base_dir), ids)

    def search(self, queries: Sequence[Any], modality: str, gallery: Gallery, k: int = 5,
               base_dir: Optional[str] = None) -> list[list[dict]]:
        """Top-`k` gallery entries per query by cosine similarity: ``[{"id", "score", "rank"}, ...]`` best first."""
        scores = self.embed(modality, queries, base_dir) @ gallery.embeddings.T
        k = min(int(k), len(gallery))
        out = []
        for row in scores:
            order = np.argsort(-row, kind="stable")[:k]
            out.append([{"id": gallery.ids[j], "score": float(row[j]), "rank": r + 1} for r, j in enumerate(order)])
        return out
