"""Gradient caching for two-tower contrastive training (GradCache, Gao et al. 2021): a contrastive batch as large
as the data allows, in the activation memory of one chunk.

InfoNCE couples every row of a batch, so the batch cannot simply be split into gradient-accumulation steps
(each would only see its own negatives). `GradientCache.step` computes the same loss and the same gradients
as one plain step over the whole batch, in three passes:

1. every chunk of `chunk_size` rows is embedded without an autograd graph (the RNG state before each chunk
   is kept, and the towers' buffers, e.g. BatchNorm statistics, are put back afterwards);
2. the contrastive loss runs on those embeddings (gathered across processes as in training), and
   ``torch.autograd.grad`` gives its gradient with respect to every embedding, to the learned temperature and
   to the projections of towers that need no re-forward;
3. each chunk is embedded again, this time with a graph and with its RNG state restored (the same dropout
   masks and SpecAugment draws), and back-propagated with its rows' cached gradients; the last backward also
   carries the temperature's and the other head parameters' gradients.

A tower whose encoder is frozen, or whose features come from the feature cache, is encoded once without a
graph and projected inside the loss (its projection still trains): it is never re-run. Under DDP every chunk
but the last runs inside ``accelerator.no_sync``, so gradients are all-reduced once per step; with gradient
accumulation (``accelerator.accumulate``) the last chunk syncs only on the accumulation step's last batch.
The contrastive batch is one micro-batch (``train.batch_size`` per process, all-gathered): accumulation adds
steps' gradients, it never widens the negatives. Mixed precision: the loss and the backward go through the
accelerator's autocast and ``accelerator.backward`` (the fp16 loss scale applies to every chunk).

Exactness: with the same chunking the gradients equal those of the plain step (to float64 round-off), except
where a layer mixes the rows of a batch - BatchNorm in training mode normalises each chunk by its own
statistics, as it normalises each process's rows under DDP without SyncBatchNorm.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from encoders.base import EncoderOutput
from multimodal.config.schema import ConfigError
from multimodal.models.contrastive import ContrastiveHead
from multimodal.training.predict import forward_batch


@dataclass
class RngSnapshot:
    """The random states a forward pass may draw from: torch (CPU and the accelerator device), numpy, random."""

    cpu: torch.Tensor
    device: Optional[tuple[torch.device, torch.Tensor]]
    numpy: Any
    python: Any

    @classmethod
    def capture(cls, device: torch.device) -> RngSnapshot:
        """The current states (the device's generator only for CUDA devices)."""
        on_device = (device, torch.cuda.get_rng_state(device)) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), on_device, np.random.get_state(), random.getstate())

    def restore(self) -> None:
        """Put the captured states back."""
        torch.set_rng_state(self.cpu)
        if self.device is not None:
            torch.cuda.set_rng_state(self.device[1], self.device[0])
        np.random.set_state(self.numpy)
        random.setstate(self.python)


def _rows(value: Any, start: int, stop: int, n: int) -> Any:
    """Rows `start:stop` of a batch entry: tensors with `n` rows, EncoderOutputs and dicts of them."""
    if isinstance(value, torch.Tensor):
        return value[start:stop] if value.dim() and value.shape[0] == n else value
    if isinstance(value, EncoderOutput):
        return EncoderOutput(*(_rows(v, start, stop, n) if v is not None else None
                               for v in (value.pooled, value.tokens, value.mask)))
    if isinstance(value, dict):
        return {k: _rows(v, start, stop, n) for k, v in value.items()}
    return value


def _batch_rows(inputs: dict[str, dict[str, torch.Tensor]]) -> int:
    """Rows of a batch's inputs (the first tensor's length)."""
    for entry in inputs.values():
        for value in entry.values():
            if isinstance(value, torch.Tensor) and value.dim():
                return int(value.shape[0])
    raise ValueError("gradient caching: the batch holds no input tensors")


class GradientCache:
    """One training step of a two-tower model (``model.head`` a `ContrastiveHead`) in chunks of `chunk_size` rows,
    with the loss and gradients of the whole batch (see the module docstring)."""

    def __init__(self, chunk_size: int, accelerator: Any) -> None:
        if int(chunk_size) < 1:
            raise ConfigError(f"train.contrastive_chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size, self.accelerator = int(chunk_size), accelerator
        self._warned_batchnorm = False

    @classmethod
    def for_trainer(cls, trainer: Any) -> GradientCache:
        """The strategy for a `Trainer` with ``train.gradient_cache``; refused where it cannot give the same step."""
        model = trainer.unwrapped_model
        if not isinstance(getattr(model, "head", None), ContrastiveHead):
            raise ConfigError(f"train.gradient_cache: the model is a {type(model).__name__}; gradient caching needs a "
                              "two-tower model with a contrastive loss (DualEncoder, task retrieval)")
        for what, used in (("train.adversarial", trainer.adversary is not None),
                           ("FSDP", trainer.fsdp_block_classes is not None)):
            if used:
                raise ConfigError(f"train.gradient_cache cannot be combined with {what}")
        return cls(trainer.config.contrastive_chunk_size, trainer.accelerator)

    def step(self, model: nn.Module, batch: dict, loss_fn: Any = None) -> torch.Tensor:
        """Forward and backward one batch through the prepared `model`; returns the (detached) batch loss.
        A custom `loss_fn` (distillation, a federated proximal term) is refused: only the model's own loss is cached."""
        if loss_fn is not None:
            raise ConfigError(f"train.gradient_cache caches the gradients of the model's own contrastive loss; a "
                              f"custom training loss ({type(loss_fn).__name__}) cannot be combined with it")
        acc, unwrapped = self.accelerator, self.accelerator.unwrap_model(model)
        head = getattr(unwrapped, "head", None)
        if not isinstance(head, ContrastiveHead):
            raise ConfigError(f"train.gradient_cache needs a two-tower model with a contrastive head (DualEncoder); "
                              f"got {type(unwrapped).__name__}")
        inputs, features = dict(batch.get("inputs") or {}), dict(batch.get("features") or {})
        cached = [m for m in unwrapped.modalities if m in inputs and m not in features
                  and any(p.requires_grad for p in unwrapped.encoders[m].parameters())]
        n = _batch_rows(inputs) if cached else 0
        bounds = self._bounds(n) if cached else []
        if len(bounds) < 2:  # nothing to re-run, or one chunk: the plain step is the same computation
            out = forward_batch(model, batch)
            acc.backward(out.loss)
            return out.loss.detach()
        unwrapped.check_present(batch.get("present"))
        self._warn_batchnorm(unwrapped, cached)
        chunk = {m: inputs.pop(m) for m in cached}
        states, embeddings, frozen = self._embed_without_graph(unwrapped, chunk, inputs, bounds, n)
        frozen.update({m: f.pooled if isinstance(f, EncoderOutput) else f for m, f in features.items()})
        leaves = {m: e.detach().requires_grad_() for m, e in embeddings.items()}
        params = [p for name, p in head.named_parameters() if p.requires_grad
                  and not any(name.startswith(f"projections.{m}.") for m in cached)]
        with acc.autocast():
            embedded = {**leaves, **{m: head.embed(m, pooled) for m, pooled in frozen.items()}}
            loss = head.loss(embedded, batch.get("present"))
        grads = torch.autograd.grad(loss, [*leaves.values(), *params], allow_unused=True)
        row_grads = {m: torch.zeros_like(leaf) if g is None else g for (m, leaf), g in zip(leaves.items(), grads)}
        head_grads = [(p, g) for p, g in zip(params, grads[len(leaves):]) if g is not None]
        self._backward_chunks(model, chunk, bounds, n, states, row_grads, head_grads)
        return loss.detach()

    def _bounds(self, n: int) -> list[tuple[int, int]]:
        """Row ranges of the chunks; every process runs the same number of them (DDP forwards must pair up)."""
        count = -(-n // self.chunk_size)
        if self.accelerator.num_processes > 1:
            sizes = self.accelerator.gather(torch.tensor([n], device=self.accelerator.device))
            count = -(-int(sizes.max()) // self.chunk_size)
            if n < count:
                raise ValueError(f"gradient caching: this process has {n} rows for {count} chunks (another process "
                                 f"has {int(sizes.max())}); use even batches or a larger train.contrastive_chunk_size")
        edges = np.linspace(0, n, count + 1).round().astype(int)
        return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]

    def _embed_without_graph(self, unwrapped: nn.Module, chunk: dict, other: dict, bounds: list[tuple[int, int]],
                             n: int) -> tuple[list[RngSnapshot], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Pass 1: the RNG state before each chunk, the re-run towers' embeddings, the other towers' pooled features."""
        towers = [unwrapped.encoders[m] for m in chunk]
        buffers = [(b, b.detach().clone()) for tower in towers for b in tower.buffers()]
        states: list[RngSnapshot] = []
        parts: dict[str, list[torch.Tensor]] = {m: [] for m in chunk}
        pooled: dict[str, list[torch.Tensor]] = {m: [] for m in other}
        with torch.no_grad():
            for start, stop in bounds:
                if other:
                    for m, f in unwrapped.encode_inputs(_rows(other, start, stop, n)).items():
                        pooled[m].append(f.pooled)
                states.append(RngSnapshot.capture(self.accelerator.device))
                out = unwrapped(inputs=_rows(chunk, start, stop, n), compute_loss=False)
                for m in chunk:
                    parts[m].append(out.embeddings[m])
            for buffer, saved in buffers:  # pass 3 updates the running statistics, once per chunk
                buffer.copy_(saved)
        return states, {m: torch.cat(p) for m, p in parts.items()}, {m: torch.cat(p) for m, p in pooled.items()}

    def _backward_chunks(self, model: nn.Module, chunk: dict, bounds: list[tuple[int, int]], n: int,
                         states: list[RngSnapshot], row_grads: dict[str, torch.Tensor],
                         head_grads: list[tuple[nn.Parameter, torch.Tensor]]) -> None:
        """Pass 3: each chunk again with a graph and its own RNG state, back-propagated with its cached gradients."""
        acc = self.accelerator
        after = RngSnapshot.capture(acc.device)
        for i, ((start, stop), state) in enumerate(zip(bounds, states)):
            last = i == len(bounds) - 1
            with contextlib.nullcontext() if last else acc.no_sync(model):
                state.restore()
                out = model(inputs=_rows(chunk, start, stop, n), compute_loss=False)
                terms = [(out.embeddings[m] * g[start:stop].to(out.embeddings[m].dtype)).sum()
                         for m, g in row_grads.items()]
                if last:  # the temperature and the projections of towers that are not re-run
                    terms += [(p * g).sum() for p, g in head_grads]
                acc.backward(sum(terms))
        after.restore()  # the states after pass 1: what a resumed run restores at the next step

    def _warn_batchnorm(self, unwrapped: nn.Module, cached: list[str]) -> None:
        if self._warned_batchnorm:
            return
        norms = [m for m in cached if any(isinstance(x, nn.modules.batchnorm._BatchNorm) and x.training
                                          for x in unwrapped.encoders[m].modules())]
        if norms:
            warnings.warn(f"gradient caching: BatchNorm layers of the {', '.join(norms)} tower(s) normalise each chunk "
                          f"of {self.chunk_size} rows by its own statistics, not the whole batch", stacklevel=3)
        self._warned_batchnorm = True
