"""The retrieval task: one row per item per epoch, distinct entries in evaluation (duplicate captions are one
query with several relevant items), zero-shot through the classification metrics, any pair of modalities."""

from __future__ import annotations

import pytest
import torch

from multimodal.config import load_config
from multimodal.data import EpochSampler, MultimodalDataset, item_groups
from multimodal.evaluation.metrics import classification_metrics
from multimodal.registry import get_task


def test_one_row_per_group_per_epoch_and_deterministic():
    keys = ["a", "a", "b", "c", "b", "b"]
    sampler = EpochSampler(len(keys), seed=3, groups=item_groups(keys))
    seen = set()
    for epoch in range(30):
        sampler.set_epoch(epoch)
        rows = list(sampler)
        assert len(rows) == 3 and len({keys[r] for r in rows}) == 3  # never the same item twice
        seen.update(rows)
        assert len({r.seed for r in rows}) == 1  # every index carries the epoch's augmentation seed
    assert seen == set(range(6))  # every caption is used over epochs
    sampler.set_epoch(7)
    assert list(sampler) == list(sampler)
    plain = EpochSampler(6, seed=3)
    plain.set_epoch(1)
    assert sorted(plain) == list(range(6))


class _Towers(torch.nn.Module):
    """Stands in for a DualEncoder in `RetrievalTask.evaluate`: only `.head.pairs` and `.encoders` are read."""

    def __init__(self, modalities):
        super().__init__()
        self.encoders = {m: None for m in modalities}
        self.head = type("Head", (), {"pairs": [tuple(sorted(modalities))]})()


def _task(*extra):
    cfg = load_config(None, ["model.task=retrieval", "model.encoders={text: 'text:x', audio: 'audio-mel:y'}",
                             "retrieval.zero_shot=false", *extra])
    return get_task("retrieval")(cfg)


def test_duplicate_captions_are_one_entry_with_every_item_relevant(capsys):
    # three clips, captions that are class names: clips 0 and 1 are both "dog"
    rows = [{"audio": "/clips/0.wav", "text": "dog"}, {"audio": "/clips/1.wav", "text": "dog"},
            {"audio": "/clips/2.wav", "text": "cat"}]
    ds = MultimodalDataset(rows, {"audio": "audio", "text": "text"}, None, None, validate=False, progress=False)
    dog, cat = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    preds = {"index": torch.tensor([2, 0, 1]),  # gathered order need not be dataset order
             "embeddings.text": torch.stack([cat, dog, dog]), "embeddings.audio": torch.stack([cat, dog, dog])}
    result = _task().evaluate(preds, ds, _Towers(["audio", "text"]))
    m = result.metrics
    assert m["num_text"] == 2 and m["num_audio"] == 3
    assert m["audio_to_text/R@1"] == 1.0  # was 0 when identical captions were separate, competing entries
    assert m["text_to_audio/R@1"] == 1.0 and m["text_to_audio/mAP@10"] == 1.0
    assert any("identical texts are one entry" in n for n in result.notes)
    assert "warning" in capsys.readouterr().out


def test_absent_rows_are_not_queries_and_items_are_deduplicated():
    rows = [{"audio": "/a.wav", "text": "one"}, {"audio": "/a.wav", "text": "uno"}, {"audio": "/b.wav", "text": None},
            {"audio": "/c.wav", "text": "three"}]
    ds = MultimodalDataset(rows, {"audio": "audio", "text": "text"}, None, None, validate=False, progress=False)
    eye = torch.eye(3)
    preds = {"index": torch.arange(4), "present.text": torch.tensor([True, True, False, True]),
             "present.audio": torch.ones(4, dtype=torch.bool),
             "embeddings.text": torch.stack([eye[0], eye[0], eye[1], eye[2]]),
             "embeddings.audio": torch.stack([eye[0], eye[0], eye[1], eye[2]])}
    m = _task().evaluate(preds, ds, _Towers(["audio", "text"])).metrics
    assert m["num_text"] == 3 and m["num_audio"] == 3  # /a.wav once; the missing caption is no entry
    assert m["text_to_audio/num_queries"] == 3 and m["audio_to_text/num_queries"] == 2  # /b.wav has no caption
    assert m["text_to_audio/R@1"] == 1.0


def test_zero_shot_uses_the_classification_metrics(monkeypatch):
    rows = [{"audio": f"/{i}.wav", "text": f"clip {i}", "label": lab} for i, lab in enumerate(["dog", "cat", "dog"])]
    ds = MultimodalDataset(rows, {"audio": "audio", "text": "text"}, None, None, validate=False, progress=False)
    task = _task("retrieval.zero_shot=true", "retrieval.templates=['{}']")
    task.class_names = ["cat", "dog", "owl"]  # from the training split: owl never occurs here
    weights = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    monkeypatch.setattr(type(task), "class_embeddings", staticmethod(lambda model, names, templates: weights))
    audio = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.7, 0.7]])  # clip 2 (a dog) is closest to "owl"
    preds = {"index": torch.arange(3), "embeddings.text": torch.randn(3, 2), "embeddings.audio": audio}
    result = task.evaluate(preds, ds, _Towers(["audio", "text"]))
    zs = result.metrics["zero_shot"]["audio"]
    expected = classification_metrics(audio @ weights.t(), torch.tensor([1, 0, 1]), "single_label")
    for key in ("accuracy", "macro_f1", "num_classes"):
        assert zs[key] == expected[key], key
    assert zs["accuracy"] == pytest.approx(2 / 3) and zs["class_names"] == ["cat", "dog", "owl"]
    assert result.confusion == zs["confusion_matrix"]


def test_same_label_recall_counts_any_entry_of_the_query_label():
    # four digit clips, each with its own caption; captions 0-1 say "one", 2-3 say "two" (label column "digit")
    rows = [{"audio": f"/{i}.wav", "text": f"clip {i}", "digit": d} for i, d in enumerate(["1", "1", "2", "2"])]
    ds = MultimodalDataset(rows, {"audio": "audio", "text": "text"}, None, None, validate=False, progress=False)
    e = torch.eye(4)
    # every caption is closest to the OTHER clip of its digit: instance R@1 0, same-label R@1 1
    text = torch.stack([e[1], e[0], e[3], e[2]])
    preds = {"index": torch.arange(4), "embeddings.text": text, "embeddings.audio": e}
    result = _task("data.label_column=digit").evaluate(preds, ds, _Towers(["audio", "text"]))
    m = result.metrics
    assert m["text_to_audio/R@1"] == 0.0 and m["same_label/text_to_audio/R@1"] == 1.0
    assert m["same_label/audio_to_text/R@1"] == 1.0 and m["same_label/chance/text_to_audio/R@1"] == 0.5
    assert any(n.startswith("Same-label retrieval") for n in result.notes)
    assert not any(k.startswith("same_label/") for k in _task().evaluate(preds, ds, _Towers(["audio", "text"])).metrics)


def test_metric_names_follow_the_modalities():
    names = get_task("retrieval").metric_names(load_config(None, [
        "model.task=retrieval", "model.encoders={image: 'image:x', audio: 'audio-mel:y'}"]))
    assert {"audio_to_image/R@1", "image_to_audio/R@5", "rsum"} <= names
