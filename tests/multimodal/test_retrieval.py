"""Retrieval and zero-shot metrics against hand-computed values; caption grouping and sampling."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from multimodal.retrieval import (
    OneCaptionPerItemSampler,
    average_precision_at_k,
    group_captions,
    retrieval_metrics,
    zero_shot_metrics,
)

# 5 captions, 3 items; captions 0,1 -> item 0; caption 2 -> item 1; captions 3,4 -> item 2.
SIM = np.array(
    [
        [0.9, 0.1, 0.2],  # rank 1
        [0.3, 0.5, 0.3],  # item 0 at .3: item 1 ahead, item 2 tied -> pessimistic rank 3
        [0.2, 0.4, 0.4],  # item 1 at .4 tied with item 2 -> rank 2
        [0.1, 0.0, 0.8],  # rank 1
        [0.6, 0.7, 0.5],  # rank 3
    ]
)
C2I = [0, 0, 1, 2, 2]


def test_text_to_item_hand_computed():
    m = retrieval_metrics(SIM, C2I, ks=(1, 2, 5), item_name="image")
    # ranks [1, 3, 2, 1, 3]
    assert m["text_to_image/R@1"] == pytest.approx(2 / 5)
    assert m["text_to_image/R@2"] == pytest.approx(3 / 5)
    assert m["text_to_image/R@5"] == pytest.approx(1.0)
    assert m["text_to_image/median_rank"] == 2.0
    assert m["text_to_image/mean_rank"] == pytest.approx(2.0)
    assert m["text_to_image/mAP@10"] == pytest.approx((1 + 1 / 3 + 1 / 2 + 1 + 1 / 3) / 5)
    assert m["text_to_image/recall_curve"] == pytest.approx([0.4, 0.6, 1.0])
    assert m["chance/R@1"] == pytest.approx(1 / 3)
    assert m["num_items"] == 3 and m["num_captions"] == 5


def test_item_to_text_any_caption_hand_computed():
    m = retrieval_metrics(SIM, C2I, ks=(1, 2, 5), item_name="image")
    # item 0: best caption c0 (.9) rank 1; item 1: c2 (.4) behind c4 (.7), c1 (.5) -> 3; item 2: c3 (.8) rank 1
    assert m["image_to_text/R@1"] == pytest.approx(2 / 3)
    assert m["image_to_text/R@2"] == pytest.approx(2 / 3)
    assert m["image_to_text/R@5"] == pytest.approx(1.0)
    assert m["image_to_text/median_rank"] == 1.0
    assert m["image_to_text/mean_rank"] == pytest.approx(5 / 3)
    # AP: item 0 ranked [c0 R, c4, c1 R, ...] -> (1 + 2/3) / 2; item 1 -> 1/3; item 2 [c3 R, c4 R] -> 1
    assert m["image_to_text/mAP@10"] == pytest.approx(((1 + 2 / 3) / 2 + 1 / 3 + 1) / 3)
    assert m["rsum"] == pytest.approx(0.4 + 0.6 + 1.0 + 2 / 3 + 2 / 3 + 1.0)


def test_constant_similarity_is_pessimistic_not_lucky():
    m = retrieval_metrics(np.zeros((5, 3)), C2I, item_name="audio")
    assert m["text_to_audio/R@1"] == 0.0
    assert m["text_to_audio/median_rank"] == 3.0  # every other item ranks ahead
    # item query: all non-relevant captions rank ahead of the best relevant one
    # item 0: 3 irrelevant -> rank 4; item 1: 4 -> 5; item 2: 3 -> 4
    assert m["audio_to_text/mean_rank"] == pytest.approx(13 / 3)
    assert m["audio_to_text/median_rank"] == 4.0
    assert m["audio_to_text/R@1"] == 0.0


def test_perfect_similarity_and_median_of_even_count():
    sim = np.eye(4)
    m = retrieval_metrics(sim, [0, 1, 2, 3])
    assert m["text_to_item/R@1"] == 1.0 and m["item_to_text/R@1"] == 1.0
    assert m["text_to_item/mAP@10"] == 1.0 and m["item_to_text/mAP@10"] == 1.0
    # ranks [1, 2, 3, 4] (reversed identity scores) -> median 2.5
    m2 = retrieval_metrics(np.array([[1, 0, 0, 0], [1, 0.5, 0, 0], [1, 0.9, 0.1, 0], [1, 0.9, 0.8, 0.2]]), [0, 1, 2, 3])
    assert m2["text_to_item/median_rank"] == 2.5


def test_average_precision_ties_and_more_than_k_relevant():
    scores = torch.tensor([[0.5, 0.5, 0.5]])
    assert average_precision_at_k(scores, torch.tensor([[False, True, False]]))[0] == pytest.approx(1 / 3)
    # 12 relevant at the top: AP@10 normalises by min(12, 10) -> 1.0
    s = torch.arange(20, 0, -1).float().unsqueeze(0)
    rel = torch.zeros(1, 20, dtype=torch.bool)
    rel[0, :12] = True
    assert average_precision_at_k(s, rel, 10)[0] == pytest.approx(1.0)
    # one relevant at position 11 -> outside the cut-off
    rel2 = torch.zeros(1, 20, dtype=torch.bool)
    rel2[0, 10] = True
    assert average_precision_at_k(s, rel2, 10)[0] == 0.0


def test_retrieval_metrics_rejects_bad_input():
    with pytest.raises(ValueError, match="caption_to_item has 2"):
        retrieval_metrics(SIM, [0, 1])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        retrieval_metrics(SIM, [0, 0, 1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.full((5, 3), np.nan), C2I)


def test_zero_shot_metrics_hand_computed():
    logits = np.array(
        [
            [0.9, 0.1, 0.0],  # y=0 correct
            [0.2, 0.2, 0.1],  # y=1 tied with class 0 -> pessimistic top1 miss; argmax predicts 0
            [0.1, 0.3, 0.6],  # y=2 correct
            [0.5, 0.4, 0.1],  # y=1 wrong (top2 hit)
        ]
    )
    y = [0, 1, 2, 1]
    m = zero_shot_metrics(logits, y, ["a", "b", "c"])
    assert m["top1"] == pytest.approx(2 / 4)
    assert m["top3"] == 1.0  # top-5 is capped at the class count
    # preds [0, 0, 2, 0]: F1 class0 = 2*(1/3*1)/(1/3+1) = 0.5, class1 = 0, class2 = 1
    assert m["macro_f1"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert m["confusion_matrix"] == [[1, 0, 0], [2, 0, 0], [0, 0, 1]]
    assert m["chance/top1"] == pytest.approx(1 / 3)


def test_group_captions_and_sampler():
    items, caps, c2i = group_captions(["a.png", "a.png", "b.png", "c.png", "b.png"], list("vwxyz"))
    assert items == ["a.png", "b.png", "c.png"] and c2i == [0, 0, 1, 2, 1] and caps == list("vwxyz")
    with pytest.raises(ValueError, match="row 1"):
        group_captions(["a", None], ["x", "y"])
    keys = ["a", "a", "b", "c", "b", "b"]
    sampler = OneCaptionPerItemSampler(keys, seed=3)
    seen = set()
    for epoch in range(30):
        sampler.set_epoch(epoch)
        rows = list(sampler)
        assert len(rows) == 3 and len({keys[r] for r in rows}) == 3  # never the same item twice
        seen.update(rows)
    assert seen == set(range(6))  # every caption used over epochs
    sampler.set_epoch(7)
    first = list(sampler)
    assert list(sampler) == first  # deterministic per epoch


def test_split_by_item_id_keeps_file_paths_valid(tmp_path):
    import pandas as pd

    from multimodal.retrieval import split_manifest_by_item

    (tmp_path / "imgs").mkdir()
    rows = []
    for i in range(10):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(b"png")
        rows += [{"image": f"imgs/{i}.png", "image_id": f"id{i}", "text": f"caption {i} {j}"} for j in range(2)]
    pd.DataFrame(rows).to_csv(tmp_path / "pairs.csv", index=False)
    paths = split_manifest_by_item(str(tmp_path / "pairs.csv"), "image_id", str(tmp_path / "out" / "splits"),
                                   0.2, 0.2, seed=0, path_columns=["image"])
    seen = []
    for split_path in paths.values():
        part = pd.read_csv(split_path)
        assert all(os.path.isfile(p) for p in part["image"])  # resolved against the original manifest's folder
        assert all(v.startswith("id") for v in part["image_id"])  # the grouping key is left as it is
        seen.append(set(part["image_id"]))
    assert sum(len(s) for s in seen) == len(set().union(*seen)) == 10  # no item in two splits
