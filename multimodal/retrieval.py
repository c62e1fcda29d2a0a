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

import random
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import Sampler

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
