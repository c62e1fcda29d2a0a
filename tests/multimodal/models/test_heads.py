"""TaskHead: shapes, the three losses against torch.nn references, label validation, config."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from multimodal import TaskHead
from multimodal.models import LABEL_TYPES


def test_single_label_cross_entropy():
    torch.manual_seed(0)
    head = TaskHead(8, 3, label_type="single_label")
    logits = head(torch.randn(5, 8))
    labels = torch.tensor([0, 2, 1, 1, 0])
    assert logits.shape == (5, 3)
    expected = nn.CrossEntropyLoss()(logits, labels)
    torch.testing.assert_close(head.loss(logits, labels), expected)


def test_multi_label_bce_with_logits():
    torch.manual_seed(0)
    head = TaskHead(8, 4, label_type="multi_label", hidden_dim=16, dropout=0.1)
    logits = head(torch.randn(5, 8))
    labels = (torch.rand(5, 4) > 0.5).float()
    p = torch.sigmoid(logits)
    expected = -(labels * p.log() + (1 - labels) * (1 - p).log()).mean()
    torch.testing.assert_close(head.loss(logits, labels), expected)


@pytest.mark.parametrize("k", [1, 3])
def test_regression_mse(k):
    torch.manual_seed(0)
    head = TaskHead(8, k, label_type="regression")
    preds = head(torch.randn(6, 8))
    labels = torch.randn(6) if k == 1 else torch.randn(6, k)
    expected = ((preds - labels.reshape(6, k)) ** 2).mean()
    torch.testing.assert_close(head.loss(preds, labels), expected)


def test_head_trains_down():
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = (x[:, 0] > 0).long()
    head = TaskHead(8, 2)
    opt = torch.optim.AdamW(head.parameters(), lr=0.05)
    first = head.loss(head(x), y).item()
    for _ in range(30):
        opt.zero_grad()
        loss = head.loss(head(x), y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_bad_labels_and_arguments_say_what_was_expected():
    head = TaskHead(4, 3)
    logits = torch.randn(2, 3)
    with pytest.raises(ValueError, match="integer tensor of shape \\(2,\\)"):
        head.loss(logits, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="lie in \\[0, 3\\)"):
        head.loss(logits, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="shape \\(2, 3\\)"):
        TaskHead(4, 3, label_type="multi_label").loss(logits, torch.zeros(2))
    with pytest.raises(ValueError, match="label_type must be one of"):
        TaskHead(4, 3, label_type="ranking")
    with pytest.raises(ValueError, match="expects \\[B, 4\\]"):
        head(torch.randn(2, 5))


def test_config_rebuilds_same_head():
    head = TaskHead(6, 2, label_type="multi_label", hidden_dim=5, dropout=0.2)
    rebuilt = TaskHead(**head.get_config())
    rebuilt.load_state_dict(head.state_dict(), strict=True)
    assert rebuilt.get_config() == head.get_config()
    old = {**head.get_config()}
    old["task"] = old.pop("label_type")  # as saved before the rename: loads without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert TaskHead.from_config(old).get_config() == head.get_config()


def test_old_task_keyword_and_attribute_still_work_and_warn():
    with pytest.warns(DeprecationWarning, match=r"TaskHead\(task=...\) is deprecated: pass label_type="):
        head = TaskHead(6, 3, task="multi_label")
    assert head.label_type == "multi_label"
    with pytest.warns(DeprecationWarning, match=r"TaskHead.task is deprecated: use .label_type"):
        assert head.task == "multi_label"
    with pytest.warns(DeprecationWarning, match="use LABEL_TYPES"):
        from multimodal.models.heads import TASKS
    assert TASKS == LABEL_TYPES == ("single_label", "multi_label", "regression")
