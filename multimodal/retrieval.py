"""Cross-modal retrieval and zero-shot metrics, caption grouping and batch sampling for retrieval data.

Conventions (documented once, used everywhere in this module):

* A retrieval benchmark is a gallery of ``N`` *items* (images or audio clips) and ``Q`` *captions*;
  ``caption_to_item[q]`` is the index of the item caption ``q`` describes. Several captions per item
  are allowed (Flickr30k/COCO have five). ``similarity[q, i]`` is the score of caption ``q`` vs item ``i``.
* text -> item: every caption is a query with exactly one relevant item.
* item -> text: every item with at least one caption is a query; it is correct at K if *any* of its
  captions is in the top K, its rank is the best rank among its captions, and mAP@10 counts all of its
  captions as relevant.
* Ties are broken **pessimistically** and deterministically: an irrelevant candidate whose score equals
  the relevant one's ranks ahead of it. A constant similarity matrix therefore scores the worst possible
  rank, never a lucky R@1. Ranks are 1-based; the median of an even number of ranks is the mean of the
  two middle ones.
"""

from __future__ import annotations

import os
import random
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import Sampler

from multimodal.config import ExperimentConfig

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
DEFAULT_TEMPLATES: dict[str, list[str]] = {
    "image": ["a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a photo of the {}."],
    "audio": ["the sound of a {}.", "a recording of a {}.", "the sound of the {}.", "audio of a {}."],
}

_CHUNK = 1024


def _as_tensor(x: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def pessimistic_ranks(scores: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """1-based rank of the best relevant candidate per row, tied irrelevant candidates counted ahead.

    `scores` is ``[R, C]``, `relevant` a bool ``[R, C]`` with at least one True per row.
    """
    if scores.shape != relevant.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and relevant {tuple(relevant.shape)} differ in shape")
    if not bool(relevant.any(dim=1).all()):
        raise ValueError("every query needs at least one relevant candidate")
    neg_inf = torch.tensor(float("-inf"), dtype=scores.dtype)
    best = torch.where(relevant, scores, neg_inf).max(dim=1, keepdim=True).values
    ahead = ((scores >= best) & ~relevant).sum(dim=1)
    return ahead + 1


def average_precision_at_k(scores: torch.Tensor, relevant: torch.Tensor, k: int = 10) -> torch.Tensor:
    """AP@k per row with pessimistic tie order; normalised by ``min(#relevant, k)``."""
    relevant = relevant.bool()
    # Sort by score descending; among equal scores put irrelevant candidates first (pessimistic).
    idx = np.lexsort((relevant.numpy().astype(np.int8), -scores.double().numpy()), axis=-1)
    ranked_rel = torch.from_numpy(np.take_along_axis(relevant.numpy(), idx, axis=1))[:, :k].double()
    hits = ranked_rel.cumsum(dim=1)
    positions = torch.arange(1, ranked_rel.shape[1] + 1, dtype=torch.float64)
    precision_sum = (hits / positions * ranked_rel).sum(dim=1)
    n_rel = relevant.sum(dim=1).clamp(max=k).double()
    return (precision_sum / n_rel.clamp(min=1)).float()


def _summarise(ranks: torch.Tensor, prefix: str, ks: Sequence[int], curve_max: int) -> dict[str, Any]:
    ranks_f = ranks.double()
    out: dict[str, Any] = {}
    for k in ks:
        out[f"{prefix}/R@{k}"] = float((ranks <= k).double().mean())
    out[f"{prefix}/median_rank"] = float(np.median(ranks.numpy()))
    out[f"{prefix}/mean_rank"] = float(ranks_f.mean())
    out[f"{prefix}/recall_curve"] = [float((ranks <= k).double().mean()) for k in range(1, curve_max + 1)]
    out[f"{prefix}/num_queries"] = int(ranks.numel())
    return out


def retrieval_metrics(
    similarity: Any,
    caption_to_item: Any,
    ks: Sequence[int] = DEFAULT_KS,
    item_name: str = "item",
    map_k: int = 10,
    curve_max: int = 20,
) -> dict[str, Any]:
    """Recall@K, median/mean rank and mAP@k in both directions for a ``[captions, items]`` similarity.

    Keys look like ``text_to_image/R@1``, ``image_to_text/median_rank``, ``image_to_text/mAP@10``; also
    ``rsum`` (sum of all R@K), ``chance/R@1`` (= 1 / number of items, text -> item) and per-direction
    ``recall_curve`` lists for K = 1..curve_max. See the module docstring for the conventions.
    """
    sim = _as_tensor(similarity)
    if sim.dim() != 2:
        raise ValueError(f"similarity must be 2-D [captions, items], got shape {tuple(sim.shape)}")
    n_caps, n_items = sim.shape
    c2i = _as_tensor(caption_to_item, torch.long).reshape(-1)
    if c2i.numel() != n_caps:
        raise ValueError(f"caption_to_item has {c2i.numel()} entries but similarity has {n_caps} rows")
    if n_caps == 0 or n_items == 0:
        raise ValueError("retrieval needs at least one caption and one item")
    if int(c2i.min()) < 0 or int(c2i.max()) >= n_items:
        raise ValueError(f"caption_to_item values must lie in [0, {n_items}); got {int(c2i.min())}..{int(c2i.max())}")
    if not torch.isfinite(sim).all():
        raise ValueError("similarity contains NaN or inf")
    curve_t2i = min(curve_max, n_items)

    # text -> item: one relevant item per caption.
    t2i_ranks, t2i_ap = [], []
    for start in range(0, n_caps, _CHUNK):
        block = sim[start : start + _CHUNK]
        rel = torch.zeros_like(block, dtype=torch.bool)
        rel[torch.arange(block.shape[0]), c2i[start : start + _CHUNK]] = True
        t2i_ranks.append(pessimistic_ranks(block, rel))
        t2i_ap.append(average_precision_at_k(block, rel, map_k))
    ranks_t2i = torch.cat(t2i_ranks)

    # item -> text: items that have captions are queries; all their captions are relevant.
    counts = torch.bincount(c2i, minlength=n_items)
    query_items = torch.nonzero(counts > 0).flatten()
    sim_t = sim.t().contiguous()
    i2t_ranks, i2t_ap = [], []
    for start in range(0, query_items.numel(), _CHUNK):
        items = query_items[start : start + _CHUNK]
        block = sim_t[items]
        rel = c2i.unsqueeze(0) == items.unsqueeze(1)
        i2t_ranks.append(pessimistic_ranks(block, rel))
        i2t_ap.append(average_precision_at_k(block, rel, map_k))
    ranks_i2t = torch.cat(i2t_ranks)

    t2i, i2t = f"text_to_{item_name}", f"{item_name}_to_text"
    metrics: dict[str, Any] = {}
    metrics.update(_summarise(ranks_t2i, t2i, ks, curve_t2i))
    metrics[f"{t2i}/mAP@{map_k}"] = float(torch.cat(t2i_ap).double().mean())
    metrics.update(_summarise(ranks_i2t, i2t, ks, min(curve_max, n_caps)))
    metrics[f"{i2t}/mAP@{map_k}"] = float(torch.cat(i2t_ap).double().mean())
    metrics["rsum"] = float(sum(metrics[f"{d}/R@{k}"] for d in (t2i, i2t) for k in ks))
    metrics["num_items"] = int(n_items)
    metrics["num_captions"] = int(n_caps)
    metrics["chance/R@1"] = 1.0 / n_items
    metrics[f"chance/{t2i}/R@1"] = 1.0 / n_items
    metrics[f"chance/{i2t}/R@1"] = float((counts[query_items].double() / n_caps).mean())
    return metrics


def top_k_hits(logits: Any, labels: Any, k: int) -> torch.Tensor:
    """Bool per row: the true class is within the top k, tied wrong classes counted ahead."""
    scores = _as_tensor(logits)
    y = _as_tensor(labels, torch.long).reshape(-1)
    rel = torch.zeros_like(scores, dtype=torch.bool)
    rel[torch.arange(scores.shape[0]), y] = True
    return pessimistic_ranks(scores, rel) <= k


def zero_shot_metrics(logits: Any, labels: Any, class_names: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Top-1/top-5 accuracy (pessimistic ties) and macro-F1 (argmax, lowest index on ties) of class scores."""
    from sklearn.metrics import confusion_matrix, f1_score

    scores = _as_tensor(logits)
    y = _as_tensor(labels, torch.long).reshape(-1)
    if scores.dim() != 2 or scores.shape[0] != y.numel():
        raise ValueError(f"logits must be [N, C] with N = len(labels); got {tuple(scores.shape)} and {y.numel()}")
    n_classes = scores.shape[1]
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes})")
    pred = scores.argmax(dim=1)
    k5 = min(5, n_classes)
    labels_range = list(range(n_classes))
    out: dict[str, Any] = {
        "top1": float(top_k_hits(scores, y, 1).double().mean()),
        f"top{k5}": float(top_k_hits(scores, y, k5).double().mean()),
        "macro_f1": float(f1_score(y.numpy(), pred.numpy(), labels=labels_range, average="macro", zero_division=0)),
        "num_samples": int(y.numel()),
        "num_classes": int(n_classes),
        "chance/top1": 1.0 / n_classes,
        "confusion_matrix": confusion_matrix(y.numpy(), pred.numpy(), labels=labels_range).tolist(),
    }
    if class_names is not None:
        out["class_names"] = list(class_names)
    return out


def group_captions(items: Sequence[Any], captions: Sequence[str]) -> tuple[list[Any], list[str], list[int]]:
    """Group (item, caption) pair rows by item: unique items in first-seen order, captions, caption->item."""
    if len(items) != len(captions):
        raise ValueError(f"{len(items)} items but {len(captions)} captions")
    index: OrderedDict[Any, int] = OrderedDict()
    caption_to_item = []
    for row, (item, cap) in enumerate(zip(items, captions)):
        if item is None or (isinstance(cap, float) and np.isnan(cap)) or cap is None:
            raise ValueError(f"row {row}: retrieval pairs need both an item and a caption (got {item!r}, {cap!r})")
        key = str(item)
        if key not in index:
            index[key] = len(index)
        caption_to_item.append(index[key])
    return list(index), [str(c) for c in captions], caption_to_item


def item_groups(item_keys: Sequence[Any]) -> list[list[int]]:
    """Row indices grouped by item key, groups in first-seen order."""
    groups: OrderedDict[Any, list[int]] = OrderedDict()
    for row, key in enumerate(item_keys):
        groups.setdefault(str(key), []).append(row)
    return list(groups.values())


class OneCaptionPerItemSampler(Sampler[int]):
    """Each epoch yields one randomly chosen row (caption) per item, items shuffled.

    With several captions per item, batching the rows naively puts the same item twice in a batch, and
    in-batch InfoNCE then treats a matching caption as a negative. Drawing one caption per item per
    epoch (as open_clip does for COCO) guarantees every item appears at most once per epoch, so no
    local or globally gathered batch holds an item twice; over epochs every caption gets used.
    Call `set_epoch` (Accelerate and the trainer do) to reshuffle deterministically from `seed`.
    """

    def __init__(self, item_keys: Sequence[Any], seed: int = 0, shuffle: bool = True) -> None:
        self.groups = item_groups(item_keys)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose which caption/order the next iteration uses."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        order = list(range(len(self.groups)))
        if self.shuffle:
            rng.shuffle(order)
        for g in order:
            rows = self.groups[g]
            yield rows[rng.randrange(len(rows))] if self.shuffle else rows[0]


# --------------------------------------------------------------------------------------------------
# Retrieval recipe runner (shared by recipes/image_text_retrieval.py and recipes/audio_text_retrieval.py)


@dataclass
class RetrievalSection:
    """Retrieval-recipe options: which towers are locked, batching, demo data and evaluation."""

    # LiT-style locking: a locked tower is frozen (and, with data.feature_cache, encoded once).
    # Lock both towers to train the projections (and temperature) only; lock none to fine-tune all.
    lock_text: bool = False
    lock_image: bool = False
    lock_audio: bool = False
    # Each epoch draws one caption per item, so an item never appears twice in a (global) batch and
    # its other captions are never used as negatives. False: every (item, caption) row, plain shuffling.
    one_caption_per_item: bool = True
    # Column naming the item for grouping captions (default: the image/audio path column).
    item_key_column: Optional[str] = None
    # Built-in demo (used when data.train is not set): number of items and captions per item.
    demo_items: Optional[int] = None
    demo_captions_per_item: int = 3
    demo_dir: Optional[str] = None
    # Test-set evaluation: zero-shot classification from the label column too (when it exists).
    zero_shot: bool = True
    templates: Optional[list[str]] = None
    html_report: bool = True
    num_examples: int = 5


@dataclass
class RetrievalExperimentConfig(ExperimentConfig):
    """`ExperimentConfig` plus the `retrieval` section."""

    retrieval: RetrievalSection = field(default_factory=RetrievalSection)


def split_manifest_by_item(
    manifest: str,
    item_column: str,
    out_dir: str,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    path_columns: Sequence[str] = (),
) -> dict[str, str]:
    """Split one pair manifest into train/validation/test *by item* (all captions of an item together).

    Items are grouped by `item_column`; the file columns in `path_columns` (by default `item_column`) are
    rewritten as absolute paths, since the split CSVs are written to `out_dir`. Returns split -> path.
    """
    import pandas as pd

    from multimodal.data import read_manifest, resolve_path

    rows = read_manifest(manifest)
    if not rows or item_column not in rows[0]:
        raise KeyError(f"{manifest}: item column {item_column!r} not found")
    base = os.path.dirname(os.path.abspath(manifest))
    frame = pd.DataFrame(rows)
    for column in path_columns or (item_column,):
        if column not in frame:
            raise KeyError(f"{manifest}: file column {column!r} not found")
        frame[column] = [resolve_path(v, base) if isinstance(v, str) and v else v for v in frame[column]]
    items = list(OrderedDict.fromkeys(str(v) for v in frame[item_column]))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(items))
    n_test, n_val = int(round(test_fraction * len(items))), int(round(val_fraction * len(items)))
    if len(items) - n_test - n_val < 1:
        raise ValueError(f"{manifest}: {len(items)} items are too few to split")
    split_of = {}
    for pos, i in enumerate(order):
        split_of[items[i]] = "test" if pos < n_test else "validation" if pos < n_test + n_val else "train"
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for split in ("train", "validation", "test"):
        part = frame[[split_of[str(v)] == split for v in frame[item_column]]]
        if len(part):
            paths[split] = os.path.join(out_dir, f"{split}.csv")
            part.to_csv(paths[split], index=False)
    return paths


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class RetrievalMetricsFn:
    """`Trainer` compute_metrics_fn: Recall@K etc. from gathered pair embeddings of a split."""

    def __init__(self, item_keys: Sequence[Any], item_modality: str, ks: Sequence[int] = DEFAULT_KS) -> None:
        self.item_keys = [str(k) for k in item_keys]
        self.item_modality = item_modality
        self.ks = tuple(ks)

    def __call__(self, preds: dict[str, torch.Tensor]) -> dict[str, float]:
        index = preds["index"].tolist()
        text, items = preds["embeddings.text"].float(), preds[f"embeddings.{self.item_modality}"].float()
        order = sorted(range(len(index)), key=lambda r: index[r])  # deterministic regardless of DDP order
        first: dict[str, int] = {}  # item key -> gallery position
        gallery_rows, c2i = [], []
        for r in order:
            key = self.item_keys[index[r]]
            if key not in first:
                first[key] = len(gallery_rows)
                gallery_rows.append(r)
            c2i.append(first[key])
        gallery = items[gallery_rows]
        sim = text[order] @ gallery.t()
        return _scalars(retrieval_metrics(sim, c2i, ks=self.ks, item_name=self.item_modality))


def _item_keys(dataset: Any, column: str) -> list[str]:
    return [str(dataset.rows[i][column]) for i in dataset.indices]


@dataclass
class RetrievalSetup:
    """What `prepare_retrieval` builds: the model (locked towers frozen), the splits and the loaders."""

    model: Any
    splits: Any
    loaders: dict[str, Any]
    modalities: list[str]
    locked: list[str]
    key_column: str
    demo_used: bool


def prepare_retrieval(cfg: RetrievalExperimentConfig, item_modality: str, state: Any) -> RetrievalSetup:
    """Check the config, make the demo or split the manifest by item, and build model, splits and loaders.

    The train loader draws one caption per item per epoch when `retrieval.one_caption_per_item` is set.
    """
    from torch.utils.data import DataLoader

    from multimodal.build import build_loaders, build_model, build_splits_for
    from multimodal.config import save_config

    rcfg, mcfg, out = cfg.retrieval, cfg.model, cfg.train.output_dir
    if mcfg.fusion != "contrastive" or mcfg.task != "contrastive":
        raise ValueError("retrieval recipes need model.fusion=contrastive and model.task=contrastive")
    modalities = sorted(mcfg.encoders)
    if modalities != sorted(["text", item_modality]):
        raise ValueError(f"this recipe pairs text with {item_modality}; model.encoders has {modalities}")
    for m in ("text", "image", "audio"):
        if getattr(rcfg, f"lock_{m}") and m not in modalities:
            raise ValueError(f"retrieval.lock_{m}=true but the model has no {m} encoder ({modalities})")
    if cfg.data.hf_dataset or cfg.data.demo:
        raise ValueError("retrieval recipes read pair manifests (data.train/validation/test) or their own demo; "
                         "data.hf_dataset and data.demo are for the classification recipes")
    column = getattr(cfg.data, f"{item_modality}_column")
    key_column = rcfg.item_key_column or column
    if state.is_main_process:
        os.makedirs(out, exist_ok=True)
    demo_used = False
    with state.main_process_first():
        if not cfg.data.train:
            from multimodal import demo_retrieval

            demo_used = True
            demo_dir = rcfg.demo_dir or os.path.join(out, "demo_data")
            kwargs = {"captions_per_item": rcfg.demo_captions_per_item, "seed": cfg.data.split_seed}
            if rcfg.demo_items:
                kwargs["num_items"] = rcfg.demo_items
            make = demo_retrieval.make_image_text_pairs if item_modality == "image" else demo_retrieval.make_audio_text_pairs
            paths = make(demo_dir, **kwargs)
            cfg.data.train, cfg.data.validation, cfg.data.test = paths["train"], paths.get("validation"), paths.get("test")
            cfg.data.text_column, key_column = "text", column
        elif not cfg.data.validation and not cfg.data.test and not cfg.data.split_column:
            paths = split_manifest_by_item(cfg.data.train, key_column, os.path.join(out, "splits"),
                                           cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.split_seed,
                                           path_columns=[column])
            cfg.data.train, cfg.data.validation, cfg.data.test = paths["train"], paths.get("validation"), paths.get("test")
    if state.is_main_process:
        save_config(cfg, os.path.join(out, "config.yaml"))

    model = build_model(cfg, None)
    locked = [m for m in modalities if getattr(rcfg, f"lock_{m}")]
    if locked:
        model.freeze_encoders(locked)
    splits = build_splits_for(cfg, modalities, progress=state.is_main_process)
    loaders = build_loaders(cfg, model, splits, accelerator=state if state.num_processes > 1 else None)
    if rcfg.one_caption_per_item:
        base = loaders["train"]
        loaders["train"] = DataLoader(
            base.dataset, batch_size=cfg.train.batch_size,
            sampler=OneCaptionPerItemSampler(_item_keys(splits.train, key_column), seed=cfg.train.seed),
            collate_fn=base.collate_fn, num_workers=base.num_workers, persistent_workers=base.num_workers > 0,
            generator=torch.Generator().manual_seed(cfg.train.seed),
        )
    return RetrievalSetup(model, splits, loaders, modalities, locked, key_column, demo_used)


def run_retrieval(cfg: RetrievalExperimentConfig, item_modality: str) -> dict[str, Any]:
    """Contrastive fine-tuning of a text/`item_modality` dual encoder, then test-set retrieval evaluation.

    Writes ``model/``, ``metrics.json``, ``report.md`` (+ PNGs, ``report.html``) and ``config.yaml``
    to ``cfg.train.output_dir``; returns the metrics.
    """
    import json
    import time

    from multimodal.build import build_trainer, load_weights, process_state
    from multimodal.evaluate import evaluate_retrieval, evaluate_zero_shot
    from multimodal.plots import plot_training_curves
    from multimodal.report import write_report

    t0 = time.time()
    state = process_state()
    setup = prepare_retrieval(cfg, item_modality, state)
    model, splits, loaders = setup.model, setup.splits, setup.loaders
    locked, key_column, demo_used = setup.locked, setup.key_column, setup.demo_used
    rcfg, mcfg, out = cfg.retrieval, cfg.model, cfg.train.output_dir
    column = getattr(cfg.data, f"{item_modality}_column")
    metrics_fn = None
    if splits.validation is not None:
        metrics_fn = RetrievalMetricsFn(_item_keys(splits.validation, key_column), item_modality, cfg.eval.recall_at)
        if cfg.train.metric_for_best == "auto":
            cfg.train.metric_for_best = "rsum"
    trainer = build_trainer(cfg, model, loaders, compute_metrics_fn=metrics_fn)
    t_train = time.time()
    trainer.train()
    train_time = time.time() - t_train
    trainer.accelerator.wait_for_everyone()
    model = trainer.unwrapped_model
    load_weights(model, os.path.join(out, "model"))
    trainer.end()

    metrics: dict[str, Any] = {}
    if state.is_main_process:
        model.eval()
        cache_dir = None
        if cfg.data.feature_cache and locked:  # locked towers reuse the training-time cache
            from multimodal.build import _cache_dir

            cache_dir = _cache_dir(cfg)
        eval_manifest = cfg.data.test or cfg.data.validation
        eval_split = "test" if cfg.data.test else "validation"
        metrics = {
            "task": "retrieval",
            "item_modality": item_modality,
            "encoders": dict(mcfg.encoders),
            "locked": locked,
            "one_caption_per_item": rcfg.one_caption_per_item,
            "num_processes": state.num_processes,
            "demo_data": demo_used,
            "split_sizes": {
                name: {"pairs": len(ds), "items": len(set(_item_keys(ds, key_column)))}
                for name, ds in (("train", splits.train), ("validation", splits.validation), ("test", splits.test))
                if ds is not None
            },
            "best_epoch": trainer.state.best_epoch,
            "metric_for_best": trainer.metric_for_best,
            "train_time_s": round(train_time, 2),
            "history": trainer.state.history,
        }
        examples = None
        extra_plots = []
        if eval_manifest:
            ret, examples = evaluate_retrieval(model, eval_manifest, cfg.data.text_column, column,
                                               batch_size=cfg.eval.batch_size or cfg.train.batch_size,
                                               ks=cfg.eval.recall_at, cache_dir=cache_dir,
                                               num_examples=rcfg.num_examples)
            metrics["eval_split"] = eval_split
            metrics[eval_split] = ret
            label_column = cfg.data.label_column
            from multimodal.data import read_manifest

            if rcfg.zero_shot and label_column and label_column in read_manifest(eval_manifest)[0]:
                zs = evaluate_zero_shot(model, eval_manifest, rcfg.templates, None, label_column, column,
                                        batch_size=cfg.eval.batch_size or cfg.train.batch_size, cache_dir=cache_dir)
                metrics[f"{eval_split}_zero_shot"] = zs
        curves = plot_training_curves(trainer.state.train_log, trainer.state.history,
                                      os.path.join(out, "training_curves.png"),
                                      metric=trainer.metric_for_best if trainer.metric_for_best != "loss" else None,
                                      title=f"text+{item_modality} contrastive")
        extra_plots.append(("Training curves", curves))
        metrics["wall_time_s"] = round(time.time() - t0, 2)
        with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2, default=float)
        report_metrics = dict(metrics.get(eval_split, {}))
        notes = [
            f"Contrastive text↔{item_modality} model; locked towers: {locked or 'none'}; "
            f"trained {trainer.state.epoch} epochs in {train_time:.1f}s (best epoch {trainer.state.best_epoch}).",
        ]
        if eval_manifest:
            notes.append(
                f"{eval_split} split: {report_metrics['num_captions']} captions, {report_metrics['num_items']} items; "
                f"chance Recall@1 = 1/{report_metrics['num_items']} = {report_metrics['chance/R@1']:.4f}. "
                "Ranks are pessimistic on ties."
            )
        zs = metrics.get(f"{eval_split}_zero_shot")
        confusion = names = None
        if zs:
            notes.append(f"Zero-shot ({len(zs['templates'])} templates): top-1 {zs['top1']:.4f} "
                         f"(chance {zs['chance/top1']:.4f}), macro-F1 {zs['macro_f1']:.4f}.")
            confusion, names = zs["confusion_matrix"], zs["class_names"]
        write_report(out, report_metrics, title=f"Text–{item_modality} retrieval", examples=examples,
                     confusion=confusion, class_names=names, notes=notes, html=rcfg.html_report,
                     extra_plots=extra_plots)
    state.wait_for_everyone()
    return metrics


def summarize_retrieval(metrics: dict[str, Any]) -> str:
    """A few lines about a finished retrieval run."""
    split = metrics.get("eval_split")
    if not split or split not in metrics:
        return "no evaluation split"
    m, item = metrics[split], metrics["item_modality"]
    lines = [
        f"{split}: {m['num_items']} {item} items, {m['num_captions']} captions (chance R@1 = {m['chance/R@1']:.4f})",
        "text->{}: R@1 {:.4f}  R@5 {:.4f}  R@10 {:.4f}  median rank {}".format(
            item, m.get(f"text_to_{item}/R@1", float("nan")), m.get(f"text_to_{item}/R@5", float("nan")),
            m.get(f"text_to_{item}/R@10", float("nan")), m.get(f"text_to_{item}/median_rank")),
        "{}->text: R@1 {:.4f}  R@5 {:.4f}  R@10 {:.4f}  mAP@10 {:.4f}".format(
            item, m.get(f"{item}_to_text/R@1", float("nan")), m.get(f"{item}_to_text/R@5", float("nan")),
            m.get(f"{item}_to_text/R@10", float("nan")), m.get(f"{item}_to_text/mAP@10", float("nan"))),
    ]
    zs = metrics.get(f"{split}_zero_shot")
    if zs:
        lines.append(f"zero-shot: top-1 {zs['top1']:.4f} (chance {zs['chance/top1']:.4f}), macro-F1 {zs['macro_f1']:.4f}")
    lines.append(f"wall time {metrics.get('wall_time_s')} s")
    return "\n".join(lines)
