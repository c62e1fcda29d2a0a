"""Pruning: each method zeroes what it says (and only in scope), the result saves and reloads as a model folder,
and the recovery fine-tune keeps the zeros while improving the pruned model."""

from __future__ import annotations

import json
import os

import pytest
import torch
from deploy_helpers import fused

from encoders import create_encoder
from multimodal import load_config, load_model
from multimodal.deploy import DeployError
from multimodal.deploy.prune import attention_heads, prune_model, recover, save_pruned
from multimodal.evaluation.cli import saved_labels


def _zeros(t: torch.Tensor) -> float:
    return float((t == 0).float().mean())


def test_magnitude_pruning_zeroes_the_smallest_weights_globally(tiny_text_dir):
    model = fused({"text": create_encoder(f"text:{tiny_text_dir}"),
                   "image": create_encoder("image:test_efficientnet", pretrained=False, img_size=32)})
    layers = [m for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    before = torch.cat([m.weight.detach().abs().flatten() for m in layers])
    threshold = before.kthvalue(round(0.6 * before.numel())).values  # torch prunes round(amount * n)
    report = prune_model(model, 0.6, "magnitude")
    after = torch.cat([m.weight.detach().flatten() for m in layers])
    assert report["sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert bool((after[before > threshold] != 0).all()) and bool((after[before < threshold] == 0).all())
    assert not any(hasattr(m, "weight_orig") for m in layers)  # masks made permanent
    assert 0 < report["model_sparsity"] <= report["sparsity"]


def test_scope_limits_what_is_pruned(fused_model):
    import copy

    model = copy.deepcopy(fused_model)
    encoder_weights = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("encoders.")}
    report = prune_model(model, 0.5, "magnitude", scope="head")
    assert report["pruned_tensors"] and all(not n.startswith("encoders.") for n in report["pruned_tensors"])
    for n, p in model.named_parameters():
        if n in encoder_weights:
            assert torch.equal(p, encoder_weights[n]), n


def test_channel_pruning_removes_whole_output_channels_but_not_the_classes(fused_model):
    import copy

    model = copy.deepcopy(fused_model)
    prune_model(model, 0.5, "channels")
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels >= 4)
    dead = (conv.weight.detach().flatten(1) == 0).all(1)
    assert int(dead.sum()) == round(0.5 * conv.out_channels)
    assert _zeros(model.head.net[-1].weight) == 0.0  # the class rows are kept


@pytest.mark.parametrize("spec", ["text", "image:test_vit"])
def test_head_pruning_silences_whole_attention_heads(spec, tiny_text_dir):
    encoder = create_encoder(f"text:{tiny_text_dir}") if spec == "text" else create_encoder(spec, pretrained=False)
    model = fused({encoder.modality: encoder})
    blocks = attention_heads(model)
    total = sum(h for _, _, _, h in blocks)
    assert blocks and total >= 4
    report = prune_model(model, 0.5, "heads")
    silenced = 0
    for _, _, linears, heads in blocks:
        weight = torch.cat([lin.weight.detach() for lin in linears]) if len(linears) > 1 else linears[0].weight.detach()
        rows = weight.shape[0] // (3 * heads)  # [q; k; v] rows, each heads x rows wide, in both layouts
        for h in range(heads):
            idx = [p * heads * rows + h * rows + r for p in range(3) for r in range(rows)]
            if bool((weight[idx] == 0).all()):
                silenced += 1
        assert silenced < sum(hh for _, _, _, hh in blocks)  # at least one head kept per block
    assert silenced == round(0.5 * total) and report["pruned_tensors"]
    with pytest.raises(DeployError, match="no attention heads"):
        prune_model(fused({"image": create_encoder("image:test_efficientnet", pretrained=False, img_size=32)}), 0.5, "heads")


def test_bad_amounts_and_methods_are_refused(fused_model):
    with pytest.raises(DeployError, match=r"\[0, 1\)"):
        prune_model(fused_model, 1.5)
    with pytest.raises(DeployError, match="unknown pruning method"):
        prune_model(fused_model, 0.1, "random")


@pytest.mark.slow
def test_recovery_keeps_the_zeros_and_the_folder_reloads(tmp_path, demo_run, tiny_text_dir):
    model_dir = os.path.join(demo_run, "model")
    model, labels = load_model(model_dir), saved_labels(model_dir)
    model.unfreeze_encoders()
    report = prune_model(model, 0.7, "magnitude")
    zeros_before = {n: (p == 0).clone() for n, p in model.named_parameters() if n in report["pruned_tensors"]}
    cfg = load_config(os.path.join(demo_run, "config.yaml"), ["train.epochs=2", "model.freeze_encoders=false"])
    report["recovery"] = recover(model, cfg, labels=labels)
    for n, p in model.named_parameters():
        if n in zeros_before:
            assert bool((p[zeros_before[n]] == 0).all()), n  # pruned weights never moved
    moved = [n for n, p in model.named_parameters() if n in zeros_before and bool((p != 0).any())]
    assert moved  # the kept weights did train
    assert "macro_f1" in report["recovery"]["test"]
    save_pruned(model, tmp_path / "pruned", labels, report)
    again = load_model(tmp_path / "pruned")
    reloaded = again.state_dict()
    assert sorted(reloaded) == sorted(model.state_dict())
    for n, a in model.state_dict().items():
        assert torch.equal(a, reloaded[n]), n
    assert json.load(open(tmp_path / "pruned" / "pruning.json"))["sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert saved_labels(str(tmp_path / "pruned")) == labels


def test_prune_cli_writes_a_folder_the_predictor_reads(tmp_path, fused_dir, capsys):
    from multimodal.deploy import Predictor
    from multimodal.deploy.cli import prune_main

    assert prune_main(["--model", fused_dir, "--output", str(tmp_path / "p"), "--amount", "0.4", "--scope", "head"]) == 0
    assert "40.0% zeros" in capsys.readouterr().out
    predictor = Predictor.from_pretrained(tmp_path / "p")
    assert predictor.labels == Predictor.from_pretrained(fused_dir).labels
    assert predictor.predict({"text": "x"})["label"] in predictor.labels
    with pytest.raises(SystemExit, match="error: the pruning amount"):
        prune_main(["--model", fused_dir, "--output", str(tmp_path / "q"), "--amount", "1"])
    with pytest.raises(SystemExit, match="error: key=value overrides need --recover-config"):
        prune_main(["--model", fused_dir, "--output", str(tmp_path / "q"), "--amount", "0.1", "train.epochs=1"])
