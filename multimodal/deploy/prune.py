"""Pruning with `torch.nn.utils.prune`: magnitude (unstructured), output channels, or attention heads, then an
optional short recovery fine-tune that keeps the pruned weights at exactly zero.

* ``magnitude``: `prune.global_unstructured` with L1 over the weights of every Linear / Conv layer in scope
  (the smallest `amount` of them, counted across layers).
* ``channels``: `prune.ln_structured` (L2, dim 0) per layer: `amount` of each layer's output channels / rows;
  the task head's output layer is left whole (its rows are the classes).
* ``heads``: the `amount` of attention heads with the smallest query/key/value weight norm, across layers (at
  least one kept per layer), masked with `prune.custom_from_mask` on their query/key/value rows and biases, so
  their output is exactly zero. HF text encoders (query/key/value) and timm ViTs (fused qkv) are found.

Masks are made permanent (`prune.remove`), so a pruned model saves and loads as an ordinary model folder. The
zeros save no time in dense kernels; they shrink compressed files and set up sparse or smaller exports.
`recover` fine-tunes with the runner's own loaders and `Trainer`, with gradient hooks that zero the gradients of
pruned weights, so AdamW (decoupled weight decay) never moves them off zero.
"""

from __future__ import annotations

import copy
import os
import tempfile
from typing import Any, Optional

import torch
from torch import nn
from torch.nn.utils import prune

from multimodal.config.schema import ExperimentConfig
from multimodal.data.labels import LabelVocab
from multimodal.deploy.errors import DeployError
from multimodal.files import write_json
from multimodal.models.base import EncoderModel, load_weights
from multimodal.registry import get_task
from multimodal.tasks.runner import build_loaders
from multimodal.training.trainer import Trainer

METHODS = ("magnitude", "channels", "heads")
SCOPES = ("all", "encoders", "head")
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _in_scope(name: str, scope: str) -> bool:
    return scope == "all" or (name.startswith("encoders.") == (scope == "encoders"))


def prunable_layers(model: nn.Module, scope: str = "all") -> list[tuple[str, nn.Module]]:
    """(name, module) of the Linear / Conv layers in `scope` (all, encoders, or head = fusion + task head)."""
    if scope not in SCOPES:
        raise DeployError(f"unknown pruning scope {scope!r}; choose one of {SCOPES}")
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LAYERS) and _in_scope(n, scope)]


def attention_heads(model: nn.Module, scope: str = "all") -> list[tuple[str, nn.Module, list[nn.Linear], int]]:
    """(name, module, [q, k, v] or [qkv], number of heads) of each attention block in `scope`."""
    found = []
    for name, module in model.named_modules():
        if not _in_scope(name, scope):
            continue
        heads = getattr(module, "num_attention_heads", None) or getattr(module, "num_heads", None)
        if heads is None:
            config = getattr(module, "config", None)
            heads = getattr(config, "num_attention_heads", None) if all(
                isinstance(getattr(module, a, None), nn.Linear) for a in ("query", "key", "value")) else None
        if all(isinstance(getattr(module, a, None), nn.Linear) for a in ("query", "key", "value")) and heads:
            found.append((name, module, [module.query, module.key, module.value], int(heads)))
        elif isinstance(getattr(module, "qkv", None), nn.Linear) and heads:
            found.append((name, module, [module.qkv], int(heads)))
    return found


def _head_rows(linears: list[nn.Linear], heads: int) -> list[tuple[nn.Linear, list[torch.Tensor]]]:
    """Per linear: a boolean row selector [out] for each head (fused qkv: the head's rows in q, k and v)."""
    out = []
    for lin in linears:
        parts = 3 if len(linears) == 1 else 1
        width = lin.out_features // parts
        size = width // heads
        selectors = []
        for h in range(heads):
            rows = torch.zeros(lin.out_features, dtype=torch.bool)
            for p in range(parts):
                rows[p * width + h * size : p * width + (h + 1) * size] = True
            selectors.append(rows)
        out.append((lin, selectors))
    return out


def _prune_heads(model: nn.Module, amount: float, scope: str) -> list[nn.Module]:
    blocks = attention_heads(model, scope)
    if not blocks:
        raise DeployError(f"no attention heads found in scope {scope!r} (HF text encoders and timm ViTs have them)")
    scores = []  # (score, block index, head)
    rows = [_head_rows(linears, heads) for _, _, linears, heads in blocks]
    for b, ((_, _, _, heads), per_linear) in enumerate(zip(blocks, rows)):
        for h in range(heads):
            norm = sum(float(lin.weight.detach()[sel[h]].norm() ** 2) for lin, sel in per_linear)
            scores.append((norm, b, h))
    cut = int(round(amount * len(scores)))
    chosen: dict[int, set[int]] = {}
    for _, b, h in sorted(scores):  # weakest first, skipping a block's last head
        if sum(len(v) for v in chosen.values()) >= cut:
            break
        if len(chosen.get(b, set())) + 1 < blocks[b][3]:
            chosen.setdefault(b, set()).add(h)
    touched = []
    for b, dropped in chosen.items():
        for lin, selectors in rows[b]:
            keep_rows = ~torch.stack([selectors[h] for h in dropped]).any(0)
            prune.custom_from_mask(lin, "weight", keep_rows[:, None].expand_as(lin.weight).to(lin.weight.dtype))
            if lin.bias is not None:
                prune.custom_from_mask(lin, "bias", keep_rows.to(lin.bias.dtype))
            touched.append(lin)
    return touched


def prune_model(model: EncoderModel, amount: float, method: str = "magnitude", scope: str = "all") -> dict[str, Any]:
    """Prune `model` in place (masks made permanent); returns a report with the pruned tensors and sparsities."""
    if method not in METHODS:
        raise DeployError(f"unknown pruning method {method!r}; choose one of {METHODS}")
    if not 0.0 <= float(amount) < 1.0:
        raise DeployError(f"the pruning amount must be in [0, 1), got {amount}")
    touched: list[nn.Module] = []
    if method == "heads":
        touched = _prune_heads(model, amount, scope)
    else:
        layers = prunable_layers(model, scope)
        if method == "channels":
            last = _output_layer(model)
            layers = [(n, m) for n, m in layers if m is not last and m.weight.shape[0] > 1]
        if not layers:
            raise DeployError(f"no Linear/Conv layers to prune in scope {scope!r}")
        if method == "magnitude":
            prune.global_unstructured([(m, "weight") for _, m in layers], pruning_method=prune.L1Unstructured,
                                      amount=float(amount))
        else:
            for _, m in layers:
                prune.ln_structured(m, "weight", amount=float(amount), n=2, dim=0)
        touched = [m for _, m in layers]
    names = {id(m): n for n, m in model.named_modules()}
    pruned = []
    for m in touched:
        for param in ("weight", "bias"):
            if prune.is_pruned(m) and hasattr(m, f"{param}_mask"):
                prune.remove(m, param)
                pruned.append(f"{names[id(m)]}.{param}")
    return {"method": method, "amount": float(amount), "scope": scope, "pruned_tensors": sorted(set(pruned)),
            **sparsity(model, sorted(set(pruned)))}


def _output_layer(model: nn.Module) -> Optional[nn.Module]:
    head = getattr(model, "head", None)
    net = getattr(head, "net", None)
    return net[-1] if isinstance(net, nn.Sequential) and isinstance(net[-1], nn.Linear) else None


def sparsity(model: nn.Module, tensors: list[str]) -> dict[str, float]:
    """Fraction of zeros in the named tensors (``sparsity``) and in every weight matrix / kernel (``model_sparsity``)."""
    params = dict(model.named_parameters())
    chosen = [params[n] for n in tensors if n in params]
    weights = [p for n, p in params.items() if p.dim() > 1]

    def zeros(ps: list[torch.Tensor]) -> float:
        total = sum(p.numel() for p in ps)
        return float(sum(int((p == 0).sum()) for p in ps)) / total if total else 0.0

    return {"sparsity": zeros(chosen), "model_sparsity": zeros(weights)}


def _mask_gradient(keep: torch.Tensor) -> Any:
    """A gradient hook that zeroes the gradient where `keep` is false."""
    return lambda grad: grad * keep


def recover(model: EncoderModel, cfg: ExperimentConfig, labels: Optional[list[str]] = None) -> dict[str, Any]:
    """Fine-tune a pruned model on the data and train settings of `cfg`, keeping its zeros; returns metrics.

    Frozen encoders stay frozen (their features may come from the feature cache); pruned weights elsewhere
    get zero gradients. The best validation epoch is kept, then the test split (if any) is scored.
    """
    if sorted(cfg.model.encoders) != model.modalities:
        raise DeployError(f"the recovery config has modalities {sorted(cfg.model.encoders)}, the model {model.modalities}")
    task = get_task(cfg.model.task)(cfg)
    splits = task.build_splits()
    if labels is not None and splits.vocab is not None and splits.vocab.names != list(labels):
        raise DeployError(f"the recovery data's labels {splits.vocab.names} differ from the model's {labels}")
    hooks = [p.register_hook(_mask_gradient(p.detach() != 0))
             for p in model.parameters() if p.requires_grad and p.dim() > 1 and bool((p == 0).any())]
    try:
        loaders = build_loaders(task, model, splits, progress=False)
        with tempfile.TemporaryDirectory(prefix="recover-") as tmp:
            tcfg = copy.deepcopy(cfg.train)
            tcfg.output_dir, tcfg.save_checkpoints, tcfg.log_with, tcfg.resume_from = tmp, False, "none", None
            metric = tcfg.metric_for_best if tcfg.metric_for_best != "auto" else task.default_metric()
            trainer = Trainer(model, tcfg, loaders["train"], loaders["validation"],
                              compute_metrics_fn=lambda preds: task.evaluate(preds, splits.validation, model, False).metrics,
                              metric_for_best=metric, metric_mode_for_best=task.metric_mode(metric),
                              eval_batch_loss=task.batch_loss)
            state = trainer.train()
            load_weights(trainer.unwrapped_model, os.path.join(tmp, "model"))
            result: dict[str, Any] = {"epochs": state.epoch, "best_epoch": state.best_epoch}
            if loaders.get("test") is not None:
                preds = trainer.predict(trainer.accelerator.prepare(loaders["test"]))
                result["test"] = task.evaluate(preds, splits.test, model, full=False).metrics
            trainer.end()
    finally:
        for h in hooks:
            h.remove()
    return result


def save_pruned(model: EncoderModel, output: str, labels: Optional[list[str]], report: dict[str, Any]) -> None:
    """``save_pretrained`` plus ``labels.json`` and ``pruning.json`` (the report)."""
    model.save_pretrained(output)
    if labels is not None:
        task = getattr(getattr(model, "head", None), "label_type", "single_label")
        LabelVocab(labels, task).save(os.path.join(output, "labels.json"))
    write_json(os.path.join(output, "pruning.json"), report)
