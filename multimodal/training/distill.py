"""Knowledge distillation: a trained teacher's outputs as soft targets for a smaller student.

``train.distill: {teacher: DIR, alpha: 0.5, temperature: 2.0}`` in a config turns it on for the run's model
(not for its single-modality baselines). The teacher is loaded from its model folder and run once, in eval
mode, over the training split (offline distillation, like the feature cache): the student's training rows,
read through the teacher's own columns and preprocessors, so the student may have other or fewer
modalities (a single-modality student of a multimodal teacher, for deployments where a modality is missing)
and other, smaller encoders. The training loss per batch is then ``(1 - alpha) * task loss + alpha * KD``:

* fused classifiers (logits KD, Hinton et al. 2015): single-label ``T^2 * KL(softmax(t / T) || softmax(s / T))``;
  multi-label ``T^2 * BCE(sigmoid(s / T), sigmoid(t / T))``; regression ``MSE(s, t)``. The teacher's label order is
  mapped onto the student's by name;
* two-tower models (similarity-matrix KD): for every aligned pair of modalities in the batch, the student's
  in-batch similarity logits (its own temperature) are matched to the teacher's, row- and column-wise,
  ``T^2 * KL`` of the softmaxes, over the rows that have both modalities.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import torch
import torch.nn.functional as F

from multimodal.config.columns import modality_columns
from multimodal.config.schema import ConfigError, DistillConfig, ExperimentConfig
from multimodal.data.dataset import MultimodalDataset
from multimodal.data.labels import LabelVocab
from multimodal.data.loading import Collator, make_dataloader
from multimodal.data.media import apply_audio_window
from multimodal.models.base import EncoderModel, load_model, read_model_config
from multimodal.models.dual import DualEncoder
from multimodal.models.fused import MultimodalModel
from multimodal.training.predict import forward_batch


class LogitDistillation:
    """Training loss of a fused student: task loss and logits KD against the teacher's logits per example."""

    def __init__(self, teacher_logits: torch.Tensor, task: str, alpha: float, temperature: float) -> None:
        self.teacher_logits, self.task = teacher_logits.float(), task
        self.alpha, self.temperature = float(alpha), float(temperature)

    def kd(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """The distillation term for a batch of student and teacher logits."""
        t = self.temperature
        if self.task == "single_label":
            return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), reduction="batchmean",
                            log_target=True) * t * t
        if self.task == "multi_label":
            return F.binary_cross_entropy_with_logits(student / t, torch.sigmoid(teacher / t)) * t * t
        return F.mse_loss(student, teacher)

    def __call__(self, batch: dict, output: Any) -> torch.Tensor:
        """``(1 - alpha) * output.loss + alpha * KD`` for the batch's examples (``batch["index"]``)."""
        logits = output.logits.float()
        teacher = self.teacher_logits.to(logits.device)[batch["index"].to(logits.device)]
        kd = self.kd(logits, teacher)
        return kd if self.alpha == 1.0 else (1 - self.alpha) * output.loss + self.alpha * kd


class SimilarityDistillation:
    """Training loss of a two-tower student: InfoNCE and similarity-matrix KD against the teacher's embeddings."""

    def __init__(self, teacher_embeddings: dict[str, torch.Tensor], teacher_scale: float, pairs: list[tuple[str, str]],
                 alpha: float, temperature: float) -> None:
        self.embeddings = {m: e.float() for m, e in teacher_embeddings.items()}
        self.teacher_scale, self.pairs = float(teacher_scale), [tuple(p) for p in pairs]
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.student_scale: Any = None  # a callable giving the student's current logit scale; set by the builder

    def kd(self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], scale: torch.Tensor,
           present: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean over the pairs of the symmetric KL between teacher and student in-batch similarity softmaxes."""
        t, terms = self.temperature, []
        for a, b in self.pairs:
            if a not in student or b not in student:
                continue
            rows = present.get(a, torch.ones(len(student[a]), dtype=torch.bool, device=student[a].device)) & \
                present.get(b, torch.ones(len(student[b]), dtype=torch.bool, device=student[b].device))
            if int(rows.sum()) < 2:
                continue
            s = scale * student[a][rows] @ student[b][rows].t()
            q = self.teacher_scale * teacher[a][rows] @ teacher[b][rows].t()
            for s_, q_ in ((s, q), (s.t(), q.t())):
                terms.append(F.kl_div(F.log_softmax(s_ / t, -1), F.log_softmax(q_ / t, -1), reduction="batchmean",
                                      log_target=True) * t * t)
        if not terms:
            return torch.zeros((), device=next(iter(student.values())).device)
        return torch.stack(terms).mean()

    def __call__(self, batch: dict, output: Any) -> torch.Tensor:
        """``(1 - alpha) * output.loss + alpha * KD`` over the batch's aligned pairs."""
        student = {m: e.float() for m, e in output.embeddings.items()}
        device = next(iter(student.values())).device
        index = batch["index"].to(device)
        teacher = {m: self.embeddings[m].to(device)[index] for m in student if m in self.embeddings}
        present = {m: p.to(device) for m, p in (batch.get("present") or {}).items()}
        kd = self.kd({m: student[m] for m in teacher}, teacher, self.student_scale(), present)
        if self.alpha == 1.0 or output.loss is None:
            return kd
        return (1 - self.alpha) * output.loss + self.alpha * kd


def load_teacher(settings: DistillConfig) -> tuple[EncoderModel, Optional[list[str]]]:
    """The teacher model (eval mode) and its label order; refuses folders that would run their own code."""
    folder = settings.teacher
    if not os.path.isdir(folder):
        raise ConfigError(f"train.distill.teacher: {folder!r} is not a directory (the teacher's model folder)")
    try:
        config = read_model_config(folder)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"train.distill.teacher: {err}") from None
    remote = [m for m, c in config["encoders"].items() if isinstance(c, dict) and c.get("trust_remote_code")]
    if remote and not settings.trust_remote_code:
        raise ConfigError(f"train.distill.teacher: {remote} encoders were saved with trust_remote_code; set "
                          "train.distill.trust_remote_code=true if you trust the folder")
    labels_path = os.path.join(folder, "labels.json")
    labels = LabelVocab.load(labels_path).names if os.path.isfile(labels_path) else None
    return load_model(folder), labels


@torch.no_grad()
def teacher_outputs(teacher: EncoderModel, cfg: ExperimentConfig, train: MultimodalDataset, device: Any) -> dict:
    """The teacher's ``logits`` or ``embeddings.<modality>`` for every example of the training split, in order."""
    columns = modality_columns(cfg, teacher.modalities)
    rows = [train.row(i) for i in range(len(train))]
    missing = sorted({c for c in columns.values() if rows and c not in rows[0]})
    if missing:
        raise ConfigError(f"train.distill.teacher needs the columns {missing}, which the training data does not have")
    data = MultimodalDataset(rows, columns, label_type=None, base_dir=train.base_dir, source=train.source,
                             row_ids=[train.row_ids[i] for i in train.indices], validate=False, progress=False,
                             limits=train.limits)
    apply_audio_window([data], teacher.get_preprocessors(False))
    loader = make_dataloader(data, Collator(teacher.get_preprocessors(False), None), cfg.eval.batch_size or
                             cfg.train.batch_size, num_workers=0)
    teacher = teacher.to(device).eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in loader:
        batch = {k: v for k, v in batch.items() if k != "labels"}
        batch["inputs"] = {m: {k: t.to(device) for k, t in d.items()} for m, d in batch["inputs"].items()}
        batch["present"] = {m: p.to(device) for m, p in batch["present"].items()}
        out = forward_batch(teacher, batch)
        if out.logits is not None:
            parts.setdefault("logits", []).append(out.logits.float().cpu())
        for m, e in (out.embeddings or {}).items():
            parts.setdefault(f"embeddings.{m}", []).append(e.float().cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def build_distillation(cfg: ExperimentConfig, train: MultimodalDataset, student: EncoderModel, device: Any) -> Any:
    """The training loss `Trainer(loss_fn=...)` takes for ``cfg.train.distill`` (see the module docstring)."""
    settings = cfg.train.distill
    teacher, teacher_labels = load_teacher(settings)
    if isinstance(student, MultimodalModel) != isinstance(teacher, MultimodalModel):
        raise ConfigError(f"train.distill.teacher is a {type(teacher).__name__} but the student is a "
                          f"{type(student).__name__}: distil a classifier into a classifier, towers into towers")
    if isinstance(student, MultimodalModel):
        if teacher.head is None or student.head is None or teacher.head.label_type != student.head.label_type:
            raise ConfigError("train.distill: teacher and student need task heads of the same task")
        logits = teacher_outputs(teacher, cfg, train, device)["logits"]
        names = train.vocab.names if train.vocab is not None else None
        if names is not None and teacher_labels is not None:
            if sorted(teacher_labels) != sorted(names):
                raise ConfigError(f"train.distill: the teacher's labels {teacher_labels} differ from the data's {names}")
            logits = logits[:, [teacher_labels.index(n) for n in names]]
        if logits.shape[1] != student.head.num_outputs:
            raise ConfigError(f"train.distill: the teacher has {logits.shape[1]} outputs, the student "
                              f"{student.head.num_outputs}")
        return LogitDistillation(logits, student.head.label_type, settings.alpha, settings.temperature)
    assert isinstance(student, DualEncoder) and isinstance(teacher, DualEncoder)
    shared = [(a, b) for a, b in student.head.pairs if a in teacher.modalities and b in teacher.modalities]
    if not shared:
        raise ConfigError(f"train.distill: the teacher's towers {teacher.modalities} share no pair with the "
                          f"student's {student.modalities}")
    outputs = teacher_outputs(teacher, cfg, train, device)
    embeddings = {m: outputs[f"embeddings.{m}"] for m in teacher.modalities if f"embeddings.{m}" in outputs}
    loss = SimilarityDistillation(embeddings, float(teacher.logit_scale.detach().exp()), shared, settings.alpha,
                                  settings.temperature)
    loss.student_scale = lambda: student.logit_scale.exp()
    return loss
