"""Cross-modal retrieval with a two-tower `DualEncoder`: text-image, text-audio, image-audio, any pair.

Data: one row per matching pair (e.g. an image and one of its captions); rows that share a file (or a
text) are one entry, so an image with five captions is one gallery item with five relevant captions, and
identical captions of different items are one query with several relevant items. Splits keep an item's
rows together (``data.group_column``, default the first non-text modality's column). Each epoch draws one
row per item (``retrieval.one_caption_per_item``), so an item is never its own negative. Metrics follow
`multimodal.evaluation.metrics` (ties count against the model); with a text tower and a label column, each
other modality is also scored by zero-shot classification from prompt templates.
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from multimodal.cache import content_key
from multimodal.config.schema import ConfigError, ExperimentConfig
from multimodal.data.dataset import MultimodalDataset
from multimodal.data.loading import item_groups
from multimodal.data.splits import DataSplits
from multimodal.evaluation.metrics import (
    classification_metrics,
    confusion,
    retrieval_metric_names,
    retrieval_metrics,
)
from multimodal.evaluation.report import EvalResult, RetrievalExamples
from multimodal.models import DualEncoder
from multimodal.registry import register_task
from multimodal.tasks.base import Task, apply_freezing, create_encoders, modality_columns

DEFAULT_TEMPLATES: dict[str, list[str]] = {
    "image": ["a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a photo of the {}."],
    "audio": ["the sound of a {}.", "a recording of a {}.", "the sound of the {}.", "audio of a {}."],
}


def read_templates(templates: Optional[list[str]], modality: str) -> list[str]:
    """Prompt templates from a list, or from a file given as the only entry (one per line), or the defaults."""
    if not templates:
        return list(DEFAULT_TEMPLATES.get(modality, ["{}"]))
    if len(templates) == 1 and os.path.isfile(templates[0]):
        with open(templates[0], encoding="utf-8") as f:
            templates = [line.rstrip("\n") for line in f if line.strip() and not line.startswith("#")]
    for t in templates:
        if "{}" not in t:
            raise ConfigError(f"prompt template {t!r} has no '{{}}' placeholder for the class name")
    return list(templates)


def _spread(n: int, k: int) -> list[int]:
    return sorted(set(np.linspace(0, n - 1, num=min(k, n)).round().astype(int).tolist())) if n else []


class RetrievalTask(Task):
    """Contrastive two-tower training (CLIP/CLAP style) and retrieval evaluation for any pair of modalities."""

    label_type = None
    uses_fusion = False
    contrastive = True
    supports_baselines = False
    batch_loss = True
    config_defaults = {"model": {"freeze_encoders": True}, "train": {"epochs": 20}}

    def __init__(self, cfg: ExperimentConfig) -> None:
        super().__init__(cfg)
        self.class_names: Optional[list[str]] = None  # zero-shot vocabulary, set from the training split

    @classmethod
    def check_config(cls, cfg: ExperimentConfig) -> None:
        if len(cfg.model.encoders) < 2:
            raise ConfigError(f"model.task={cfg.model.task!r} aligns two or more towers; model.encoders has "
                              f"{sorted(cfg.model.encoders)}")

    @classmethod
    def metric_names(cls, cfg: ExperimentConfig) -> Optional[set[str]]:
        names = {"rsum", "loss"}
        for a, b in itertools.combinations(sorted(cfg.model.encoders), 2):
            names |= retrieval_metric_names(a, b, cfg.eval.recall_at)
        return names

    def default_metric(self) -> str:
        return "rsum"

    def group_column(self) -> Optional[str]:
        items = [m for m in self.modalities if m != "text"] or self.modalities
        return modality_columns(self.cfg, items[:1])[items[0]]

    def _group_modality(self) -> str:
        items = [m for m in self.modalities if m != "text"]
        return items[0] if items else self.modalities[0]

    def train_groups(self, dataset: MultimodalDataset) -> Optional[list[list[int]]]:
        if not self.cfg.retrieval.one_caption_per_item:
            return None
        m = self._group_modality()
        return item_groups([self.entity_key(dataset, i, m) for i in range(len(dataset))])

    def build_model(self, splits: Optional[DataSplits], modalities: Optional[list[str]] = None) -> nn.Module:
        if splits is not None:
            self.class_names = self._labels_of(splits.train)
        rcfg = self.cfg.retrieval
        model = DualEncoder(create_encoders(self.cfg, modalities), embed_dim=self.cfg.model.fusion_dim,
                            projection=rcfg.projection, hidden_dim=rcfg.projection_hidden_dim, gather=rcfg.gather,
                            **dict(self.cfg.model.fusion_kwargs))
        return apply_freezing(model, self.cfg)

    # -- keys and labels ---------------------------------------------------------------------------
    @staticmethod
    def entity_key(dataset: MultimodalDataset, idx: int, modality: str) -> str:
        """What makes two rows the same entry: the file path, the text, or a hash of an in-memory sample."""
        source = dataset.source_of(idx, modality)
        return source if isinstance(source, str) else content_key(modality, source)

    def _labels_of(self, dataset: MultimodalDataset) -> Optional[list[str]]:
        column = self.cfg.data.label_column
        if not column or not len(dataset) or column not in dataset.row(0):
            return None
        values = {str(v) for i in range(len(dataset)) if (v := dataset.value(i, column)) is not None}
        return sorted(values) or None

    # -- evaluation ----------------------------------------------------------------------------------
    def evaluate(self, preds: dict[str, torch.Tensor], dataset: MultimodalDataset, model: nn.Module,
                 full: bool = True) -> EvalResult:
        index = preds["index"].tolist()
        order = sorted(range(len(index)), key=lambda r: index[r])  # deterministic whatever the DDP order
        result = EvalResult({})
        pairs = [(a, b) for a, b in model.head.pairs if f"embeddings.{a}" in preds and f"embeddings.{b}" in preds]
        rsum = 0.0
        for a, b in pairs:
            metrics, examples, note = self._pair_metrics(preds, order, index, dataset, a, b, full)
            rsum += metrics.pop("rsum")
            result.metrics.update(metrics)
            result.examples.extend(examples)
            result.notes.extend(note)
        result.metrics["rsum"] = rsum
        if full and self.cfg.retrieval.zero_shot and "text" in model.encoders:
            for m in [m for m in model.encoders if m != "text" and f"embeddings.{m}" in preds]:
                zs = self._zero_shot(preds, order, index, dataset, model, m)
                if zs is not None:
                    result.metrics.setdefault("zero_shot", {})[m] = zs
                    if result.confusion is None:
                        result.confusion, result.class_names = zs["confusion_matrix"], zs["class_names"]
                    result.notes.append(f"Zero-shot {m} ({len(zs['templates'])} templates, {zs['num_classes']} classes): "
                                        f"accuracy {zs['accuracy']:.4f} (chance {1 / zs['num_classes']:.4f}), "
                                        f"macro-F1 {zs['macro_f1']:.4f}.")
        return result

    def _unique(self, preds: dict, order: list[int], index: list[int], dataset: MultimodalDataset,
                modality: str) -> tuple[list[str], dict[str, int], torch.Tensor]:
        """Distinct entries of one side (first-seen order over dataset positions), key -> position, embeddings."""
        keys: list[str] = []
        position: dict[str, int] = {}
        rows: list[int] = []
        present = preds.get(f"present.{modality}")
        for r in order:
            if present is not None and not bool(present[r]):
                continue
            key = self.entity_key(dataset, index[r], modality)
            if key not in position:
                position[key] = len(keys)
                keys.append(key)
                rows.append(r)
        return keys, position, preds[f"embeddings.{modality}"][rows]

    def _entry_labels(self, preds: dict, order: list[int], index: list[int], dataset: MultimodalDataset,
                      modality: str) -> dict[str, str]:
        """Each distinct entry's label (``data.label_column``), by entry key; empty without a label column. An entry
        with two different labels is an error naming the row."""
        column = self.cfg.data.label_column
        if not column or not len(dataset) or column not in dataset.row(0):
            return {}
        labels: dict[str, str] = {}
        present = preds.get(f"present.{modality}")
        for r in order:
            if present is not None and not bool(present[r]):
                continue
            key, value = self.entity_key(dataset, index[r], modality), dataset.value(index[r], column)
            if value is None:
                continue
            if labels.setdefault(key, str(value)) != str(value):
                raise ValueError(f"{dataset.where(dataset.indices[index[r]])}: {modality} {key!r} has two labels "
                                 f"({labels[key]!r} and {str(value)!r})")
        return labels

    def _same_label_metrics(self, sim: torch.Tensor, preds: dict, order: list[int], index: list[int],
                            dataset: MultimodalDataset, sides: tuple[tuple[str, list[str]], tuple[str, list[str]]]
                            ) -> dict[str, Any]:
        """Class-aware retrieval: Recall@K and mAP where every gallery entry with the query's label counts as a hit
        (``same_label/<a>_to_<b>/R@1``), beside the instance metrics; empty without labels on both sides."""
        (a, keys_a), (b, keys_b) = sides
        labels_a = self._entry_labels(preds, order, index, dataset, a)
        labels_b = self._entry_labels(preds, order, index, dataset, b)
        if not labels_a or not labels_b:
            return {}
        codes = {name: i for i, name in enumerate(sorted(set(labels_a.values()) | set(labels_b.values())))}
        la = np.array([codes.get(labels_a.get(k), -1) for k in keys_a])
        lb = np.array([codes.get(labels_b.get(k), -2) for k in keys_b])
        pairs = np.argwhere(la[:, None] == lb[None, :])
        if not len(pairs):
            return {}
        metrics = retrieval_metrics(sim, pairs, names=(a, b), ks=self.cfg.eval.recall_at)
        return {f"same_label/{k}": v for k, v in metrics.items()
                if not k.endswith(("recall_curve", "median_rank", "mean_rank")) and not k.startswith("num_")}

    def _pair_metrics(self, preds: dict, order: list[int], index: list[int], dataset: MultimodalDataset, a: str,
                      b: str, full: bool) -> tuple[dict, list[RetrievalExamples], list[str]]:
        keys_a, pos_a, emb_a = self._unique(preds, order, index, dataset, a)
        keys_b, pos_b, emb_b = self._unique(preds, order, index, dataset, b)
        pa, pb = preds.get(f"present.{a}"), preds.get(f"present.{b}")
        pairs = sorted({(pos_a[self.entity_key(dataset, index[r], a)], pos_b[self.entity_key(dataset, index[r], b)])
                        for r in order if (pa is None or bool(pa[r])) and (pb is None or bool(pb[r]))})
        sim = emb_a @ emb_b.t()
        metrics = retrieval_metrics(sim, pairs, names=(a, b), ks=self.cfg.eval.recall_at)
        same = self._same_label_metrics(sim, preds, order, index, dataset, ((a, keys_a), (b, keys_b)))
        metrics.update(same)
        notes = []
        if "text" in (a, b) and full:
            side, other = (0, b) if a == "text" else (1, a)
            partners = np.bincount([p[side] for p in pairs], minlength=len(keys_a if side == 0 else keys_b))
            shared = int((partners > 1).sum())
            if shared:
                notes.append(f"{shared} distinct texts are paired with several {other} entries: identical texts are one "
                             "entry, and all their entries count as relevant.")
                print(f"warning: {notes[-1]}")
        examples = self._examples(sim, pairs, keys_a, keys_b, a, b) if full else []
        if full:
            notes.insert(0, f"{a}↔{b}: {len(keys_a)} {a} and {len(keys_b)} {b} entries, {len(pairs)} pairs; chance R@1 "
                            f"({a}→{b}) = {metrics[f'chance/{a}_to_{b}/R@1']:.4f}. Ties count against the model.")
            if same:
                notes.insert(1, f"Same-label retrieval ({self.cfg.data.label_column!r}: any {b} entry with the query's "
                                f"label is a hit): R@1 ({a}→{b}) = {same[f'same_label/{a}_to_{b}/R@1']:.4f}, chance "
                                f"{same[f'same_label/chance/{a}_to_{b}/R@1']:.4f}.")
        return metrics, examples, notes

    def _examples(self, sim: torch.Tensor, pairs: list[tuple[int, int]], keys_a: list[str], keys_b: list[str],
                  a: str, b: str) -> list[RetrievalExamples]:
        num = self.cfg.eval.num_examples
        out = []
        for q_mod, g_mod, scores, q_keys, g_keys, rel in (
            (a, b, sim, keys_a, keys_b, {(i, j) for i, j in pairs}),
            (b, a, sim.t(), keys_b, keys_a, {(j, i) for i, j in pairs}),
        ):
            ex = RetrievalExamples(q_mod, g_mod)
            top = min(5, len(g_keys))
            for q in _spread(len(q_keys), num):
                ranked = torch.argsort(scores[q], descending=True, stable=True)[:top].tolist()
                ex.queries.append(q_keys[q])
                ex.results.append([g_keys[j] for j in ranked])
                ex.correct.append([(q, j) in rel for j in ranked])
            out.append(ex)
        return out

    @torch.no_grad()
    def _zero_shot(self, preds: dict, order: list[int], index: list[int], dataset: MultimodalDataset, model: Any,
                   modality: str) -> Optional[dict[str, Any]]:
        labels = self._entry_labels(preds, order, index, dataset, modality)
        if not labels:
            return None
        keys, position, emb = self._unique(preds, order, index, dataset, modality)
        names = list(self.class_names or sorted(set(labels.values())))
        unknown = sorted(set(labels.values()) - set(names))
        if unknown:
            names += unknown  # classes never seen in training still get a prompt
        templates = read_templates(self.cfg.retrieval.templates, modality)
        weights = self.class_embeddings(model, names, templates)
        kept = [position[k] for k in keys if k in labels]
        y = torch.tensor([names.index(labels[keys[p]]) for p in kept])
        logits = emb[kept] @ weights.t().cpu()
        zs = classification_metrics(logits, y, "single_label", class_names=names)
        zs["confusion_matrix"] = confusion(logits, y)
        zs["templates"] = templates
        return zs

    @staticmethod
    @torch.no_grad()
    def class_embeddings(model: Any, class_names: list[str], templates: list[str], batch_size: int = 64) -> torch.Tensor:
        """Class embeddings ``[C, D]``: each class's prompts embedded by the text tower, averaged, re-normalised."""
        text = model.encoders["text"]
        device = next(model.parameters()).device
        prompts = [t.format(name) for name in class_names for t in templates]
        preprocess = text.get_preprocessor(train=False)
        chunks = []
        was_training = model.training
        model.eval()
        for start in range(0, len(prompts), batch_size):
            inputs = {k: v.to(device) for k, v in preprocess(prompts[start : start + batch_size]).items()}
            chunks.append(model.encode("text", inputs).float())
        model.train(was_training)
        per_class = torch.cat(chunks).view(len(class_names), len(templates), -1).mean(dim=1)
        return torch.nn.functional.normalize(per_class, dim=-1)

    @classmethod
    def headline(cls, metrics: dict[str, Any]) -> dict[str, float]:
        keys = [k for k in metrics if k.endswith(("/R@1", "/R@5", "/R@10", "/median_rank")) and not k.startswith("chance")]
        out = {k: metrics[k] for k in keys}
        for m, zs in (metrics.get("zero_shot") or {}).items():
            out[f"zero_shot_{m}/accuracy"] = zs["accuracy"]
        return out


register_task("retrieval", RetrievalTask, aliases=("contrastive",))
