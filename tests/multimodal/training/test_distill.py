"""Distillation: the KD losses equal their formulas, and a run with train.distill moves the student toward its
teacher (logits for classifiers, similarity matrices for two-tower models) where a run without it does not."""

from __future__ import annotations

import os
import shutil
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from encoders import create_encoder
from multimodal import DualEncoder, load_config, load_model, run
from multimodal.config.loading import config_from_dict, read_config_file
from multimodal.config.schema import ConfigError
from multimodal.data.manifest import read_manifest
from multimodal.deploy import Predictor
from multimodal.deploy.backends import TorchBackend
from multimodal.models.base import ModelOutput
from multimodal.registry import get_task
from multimodal.tasks.runner import build_loaders
from multimodal.training import Trainer
from multimodal.training.distill import LogitDistillation, SimilarityDistillation, build_distillation


def test_logit_kd_is_the_temperature_scaled_kl():
    torch.manual_seed(0)
    teacher, student, labels = torch.randn(10, 4), torch.randn(6, 4), torch.randint(0, 4, (6,))
    index = torch.tensor([9, 0, 3, 3, 5, 1])
    out = ModelOutput(loss=F.cross_entropy(student, labels), logits=student)
    t = 3.0
    p = F.softmax(teacher[index] / t, -1)
    manual = (p * (p.log() - F.log_softmax(student / t, -1))).sum(-1).mean() * t * t
    kd = LogitDistillation(teacher, "single_label", alpha=0.25, temperature=t)
    assert float(kd({"index": index}, out)) == pytest.approx(float(0.75 * out.loss + 0.25 * manual), rel=1e-5)
    assert float(LogitDistillation(teacher, "single_label", 0.0, t)({"index": index}, out)) == pytest.approx(float(out.loss))
    same = ModelOutput(loss=out.loss, logits=teacher[index])
    assert float(LogitDistillation(teacher, "single_label", 1.0, t)({"index": index}, same)) == pytest.approx(0.0, abs=1e-6)
    reg = LogitDistillation(teacher[:, :1], "regression", 1.0, t)
    assert float(reg({"index": index}, ModelOutput(loss=out.loss, logits=student[:, :1]))) == pytest.approx(
        float(F.mse_loss(student[:, :1], teacher[index, :1])))


def test_similarity_kd_matches_in_batch_similarities_and_skips_absent_rows():
    torch.manual_seed(0)
    emb = {m: F.normalize(torch.randn(8, 5), dim=-1) for m in ("image", "text")}
    kd = SimilarityDistillation(emb, teacher_scale=10.0, pairs=[("image", "text")], alpha=1.0, temperature=1.0)
    kd.student_scale = lambda: torch.tensor(10.0)
    index = torch.arange(8)
    same = ModelOutput(loss=torch.tensor(1.0), embeddings={m: e.clone() for m, e in emb.items()})
    assert float(kd({"index": index}, same)) == pytest.approx(0.0, abs=1e-6)
    other = ModelOutput(loss=torch.tensor(1.0), embeddings={m: F.normalize(torch.randn(8, 5), dim=-1) for m in emb})
    full = float(kd({"index": index}, other))
    assert full > 0.01
    s = 10.0 * other.embeddings["image"][:6] @ other.embeddings["text"][:6].t()
    q = 10.0 * emb["image"][:6] @ emb["text"][:6].t()
    manual = np.mean([float(F.kl_div(F.log_softmax(a, -1), F.log_softmax(b, -1), reduction="batchmean", log_target=True))
                      for a, b in ((s, q), (s.t(), q.t()))])
    present = {"image": torch.tensor([True] * 6 + [False] * 2), "text": torch.ones(8, dtype=torch.bool)}
    assert float(kd({"index": index, "present": present}, other)) == pytest.approx(manual, rel=1e-5)


def test_distill_settings_are_checked_at_load_time():
    with pytest.raises(ConfigError, match=r"train\.distill\.alpha: 1\.5 is out of range; allowed: in \[0, 1\]"):
        load_config(None, ["train.distill.teacher=/x", "train.distill.alpha=1.5"])
    with pytest.raises(ConfigError, match=r"train\.distill\.temperature: 0\.0 is out of range; allowed: > 0"):
        load_config(None, ["train.distill.teacher=/x", "train.distill.temperature=0"])
    with pytest.raises(ConfigError, match="give the teacher"):
        load_config(None, ["train.distill.alpha=0.3"])


@pytest.mark.slow
def test_a_single_modality_student_learns_its_multimodal_teacher(tmp_path, demo_run):
    """Image-only student of a text+image teacher whose soft labels are not the data's: the teacher is the demo
    classifier with its output layer set to favour one class (the one the untrained student predicts least).
    With alpha=1 the student learns that class; trained on the labels alone, it does not."""
    train_csv = os.path.join(demo_run, "splits", "train.csv")
    rows, base = read_manifest(train_csv), os.path.dirname(train_csv)
    images = [{"image": r["image"]} for r in rows]

    def config(name: str, distill) -> Any:
        values = read_config_file(os.path.join(demo_run, "config.yaml"))  # the demo run, as resolved
        values["model"]["encoders"] = {"image": "image:test_efficientnet"}  # replaced, not merged
        values["train"].update(epochs=3, output_dir=str(tmp_path / name), distill=distill)
        return config_from_dict(values)

    task = get_task("single_label")(config("untrained", None))
    labels = Predictor.from_pretrained(os.path.join(demo_run, "model")).labels
    untrained = Predictor(TorchBackend(task.build_model(task.build_splits(progress=False)), labels))
    counts = np.bincount([labels.index(p["label"]) for p in untrained.predict(images, base)], minlength=len(labels))
    target = int(np.argmin(counts))
    teacher = load_model(os.path.join(demo_run, "model"))
    with torch.no_grad():
        teacher.head.net[-1].weight.zero_()
        teacher.head.net[-1].bias.copy_(torch.tensor([4.0 if i == target else 0.0 for i in range(len(labels))]))
    teacher.save_pretrained(tmp_path / "teacher")
    shutil.copy(os.path.join(demo_run, "model", "labels.json"), tmp_path / "teacher" / "labels.json")

    share = {}
    for name, distill in (("plain", None), ("distilled", {"teacher": str(tmp_path / "teacher"), "alpha": 1.0,
                                                          "temperature": 1.0})):
        run(config(name, distill))
        student = Predictor.from_pretrained(tmp_path / name / "model")
        assert student.modalities == ["image"]
        share[name] = float(np.mean([p["label"] == labels[target] for p in student.predict(images, base)]))
    share["untrained"] = counts[target] / len(rows)
    assert share["distilled"] > 0.8 and share["plain"] < 0.5 and share["untrained"] <= 0.25, share


@pytest.mark.slow
def test_two_tower_student_matches_the_teachers_similarities(tmp_path, tiny_text_dir):
    """Frozen towers as in the retrieval default: the teacher has the student's (seeded) encoders and other
    projections, so only similarity KD can lead the student's projections to the teacher's similarities. The
    runner's pieces are used with no validation loader, so both students are their last epoch (a run keeps its
    best-rsum epoch, which need not be the one closest to the teacher)."""
    base = ["data.demo=image_text_pairs", "data.demo_size=60", "data.audio_column=null", "data.num_workers=0",
            f"data.feature_cache={tmp_path / 'cache'}", "model.task=retrieval", "model.pretrained=false", "model.fusion_dim=8",
            f"model.encoders={{text: 'text:{tiny_text_dir}', image: 'image:test_efficientnet'}}",
            "model.encoder_kwargs={image: {img_size: 32}}", "train.epochs=25", "train.batch_size=16",
            "train.head_lr=0.05", "train.log_with=none", "train.progress_bar=false", "train.save_checkpoints=false"]
    task = get_task("retrieval")(load_config(None, base))
    splits = task.build_splits(progress=False)
    torch.manual_seed(5)
    teacher = DualEncoder(task.build_model(splits).encoders, embed_dim=8)  # same seeded encoders, other projections
    teacher.head.logit_scale.data.fill_(float(np.log(20.0)))
    teacher.save_pretrained(tmp_path / "teacher")
    students = {}
    for name, extra in (("plain", []), ("distilled", [f"train.distill.teacher={tmp_path / 'teacher'}",
                                                      "train.distill.alpha=1.0"])):
        cfg = load_config(None, [*base, *extra, f"train.output_dir={tmp_path / name}"])
        task = get_task("retrieval")(cfg)
        model = task.build_model(splits)
        loss_fn = build_distillation(cfg, splits.train, model, "cpu") if cfg.train.distill else None
        Trainer(model, cfg.train, build_loaders(task, model, splits, progress=False)["train"], loss_fn=loss_fn).train()
        students[name] = model.eval()
    rows = [splits.train[i] for i in range(16)]
    images, texts = [r["image"] for r in rows], [r["text"] for r in rows]
    with torch.no_grad():
        def logits(model, scale):
            img = model.encode("image", model.encoders["image"].preprocess(images))
            txt = model.encode("text", model.encoders["text"].preprocess(texts))
            return F.log_softmax(scale * img @ txt.t(), -1)

        q = logits(teacher.eval(), 20.0)
        kl = {n: float(F.kl_div(logits(m, float(m.logit_scale.exp())), q, reduction="batchmean", log_target=True))
              for n, m in students.items()}
    assert kl["distilled"] < 0.5 * kl["plain"], kl


def test_mismatched_teachers_are_config_errors(tmp_path, demo_run, tiny_text_dir):
    dual = DualEncoder({"text": create_encoder(f"text:{tiny_text_dir}"),
                        "image": create_encoder("image:test_efficientnet", pretrained=False, img_size=32)}, embed_dim=8)
    dual.save_pretrained(tmp_path / "dual")
    for teacher, message in ((tmp_path / "dual", "distil a classifier into a classifier"),
                             (tmp_path / "nothing", "is not a directory")):
        cfg = load_config(os.path.join(demo_run, "config.yaml"), [f"train.distill.teacher={teacher}", "train.epochs=1",
                                                                  f"train.output_dir={tmp_path / 'out'}"])
        with pytest.raises(ConfigError, match=message):
            run(cfg)
