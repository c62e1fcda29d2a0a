"""Adversarial examples for training and for robust evaluation: FGSM and PGD.

Targets (``train.adversarial.on``):

* ``image``: the pixels, L-inf ball of radius epsilon in [0, 1] pixel units, kept inside [0, 1]. The
  preprocessor's uint8 pixels are perturbed in float and fed to the encoder already normalised.
* ``audio``: the audio encoder's float input (the waveform for ``audio-mel``), L-inf ball.
* ``text_embeddings``: the text encoder's word embeddings (FreeLB style): an L2 ball of radius epsilon per
  example over its real tokens, added by a forward hook on the embedding layer; padding is never perturbed.

Every step starts from a random point in the ball (uniform for L-inf, scaled Gaussian for L2), ascends the
model's own loss (sign of the gradient for L-inf, the normalised gradient for L2) and projects back.
`Adversary.training_output` is the Trainer's adversarial step: the attack runs on the unwrapped model in eval
mode (no dropout, no BatchNorm updates; frozen encoders still pass gradients to their inputs), then one
forward of the prepared model trains on the adversarial batch, or with ``mix`` on the clean and the
adversarial copy together (one forward and one backward, so DDP sees an ordinary step).
`Adversary.attacked_output` is the forward that `predict` uses to score robust accuracy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from encoders.base import EncoderOutput
from multimodal.config.schema import ADVERSARIAL_TARGETS
from multimodal.models.base import ModelOutput
from multimodal.training.predict import forward_batch

AUDIO_INPUT_KEYS = ("waveform", "input_values", "input_features")


def text_embedding_layer(encoder: nn.Module) -> nn.Module:
    """The word-embedding layer of a text encoder (a transformers backbone's ``get_input_embeddings()``)."""
    backbone = getattr(encoder, "backbone", None)
    getter = getattr(backbone, "get_input_embeddings", None)
    layer = getter() if callable(getter) else None
    if not isinstance(layer, nn.Module):
        raise ValueError(f"{getattr(encoder, 'spec', type(encoder).__name__)}: text_embeddings perturbations need a "
                         "transformers backbone with get_input_embeddings()")
    return layer


@contextlib.contextmanager
def embedding_offset(encoder: nn.Module, delta: Optional[torch.Tensor]) -> Iterator[None]:
    """Add `delta` [B, T, D] to the text encoder's word embeddings for the duration of the block."""
    if delta is None:
        yield
        return
    handle = text_embedding_layer(encoder).register_forward_hook(lambda _m, _a, out: out + delta.to(out.dtype))
    try:
        yield
    finally:
        handle.remove()


@dataclass
class _Space:
    """One perturbed input: the clean value in attack space, how to turn it back into encoder inputs, bounds."""

    modality: str
    key: Optional[str]  # the input tensor replaced (None: text, perturbed through the embedding hook)
    clean: torch.Tensor
    decode: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda x: x)
    bounds: Optional[tuple[float, float]] = None
    mask: Optional[torch.Tensor] = None  # text: real tokens [B, T, 1]


def _image_space(encoder: nn.Module, pixels: torch.Tensor) -> _Space:
    scale, shift = getattr(encoder, "pixel_scale", None), getattr(encoder, "pixel_shift", None)
    if pixels.dtype == torch.uint8 and scale is not None:
        return _Space("image", "pixel_values", pixels.float() / 255.0, lambda x: x * 255.0 * scale + shift, (0.0, 1.0))
    if not pixels.is_floating_point():
        raise ValueError("image perturbations need float pixel_values, or uint8 ones from an image encoder that "
                         "normalises them (pixel_scale / pixel_shift)")
    return _Space("image", "pixel_values", pixels.float())  # already normalised: radius in those units, no bounds


def _audio_space(inputs: dict[str, torch.Tensor]) -> _Space:
    for key in AUDIO_INPUT_KEYS:
        if key in inputs and inputs[key].is_floating_point():
            return _Space("audio", key, inputs[key].float())
    raise ValueError(f"audio perturbations need a float input tensor ({', '.join(AUDIO_INPUT_KEYS)}); got {sorted(inputs)}")


def _concat(a: Any, b: Any) -> Any:
    """Two batches (nested dicts of tensors / EncoderOutputs) stacked along the batch dimension."""
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b.to(a.dtype)])
    if isinstance(a, EncoderOutput):
        return EncoderOutput(*(None if x is None else torch.cat([x, y]) for x, y in zip(a, b)))
    if isinstance(a, dict):
        return {k: _concat(a[k], b[k]) for k in a}
    return a


class Adversary:
    """FGSM / PGD perturbations of a batch (see the module docstring); `config` is an `AdversarialConfig`."""

    def __init__(self, config: Any, autocast: Optional[Callable[[], Any]] = None, seed: Optional[int] = None) -> None:
        self.method = config.method
        self.targets = list(config.on)
        eps = config.epsilon
        self.epsilon = {t: float(eps[t] if isinstance(eps, dict) else eps) for t in self.targets}
        self.steps = 1 if self.method == "fgsm" else int(config.steps)
        if config.step_size:
            self.step_size = {t: float(config.step_size) for t in self.targets}
        else:
            factor = 1.25 if self.method == "fgsm" else 2.5 / self.steps
            self.step_size = {t: factor * e for t, e in self.epsilon.items()}
        self.mix = bool(getattr(config, "mix", True))
        self.autocast = autocast or contextlib.nullcontext
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    # -- attack ------------------------------------------------------------------------------
    def _spaces(self, model: nn.Module, inputs: dict) -> dict[str, _Space]:
        spaces = {}
        for target in self.targets:
            m = ADVERSARIAL_TARGETS[target]
            if m not in inputs:
                raise ValueError(f"train.adversarial.on: {target!r} needs the {m} encoder to run on its inputs, but the "
                                 f"batch has none (is {m} read from the feature cache?)")
            if m == "image":
                spaces[target] = _image_space(model.encoders[m], inputs[m]["pixel_values"])
            elif m == "audio":
                spaces[target] = _audio_space(inputs[m])
            else:
                ids = inputs[m]["input_ids"]
                layer = text_embedding_layer(model.encoders[m])
                dim = int(layer.weight.shape[-1])
                mask = inputs[m].get("attention_mask", torch.ones_like(ids)).bool().unsqueeze(-1)
                zeros = torch.zeros((*ids.shape, dim), device=ids.device)
                spaces[target] = _Space(m, None, zeros, mask=mask)
        return spaces

    def _random_start(self, target: str, space: _Space) -> torch.Tensor:
        eps = self.epsilon[target]
        if space.mask is None:  # uniform in the L-inf ball
            return ((torch.rand(space.clean.shape, generator=self.generator) * 2 - 1) * eps).to(space.clean.device)
        direction = torch.randn(space.clean.shape, generator=self.generator).to(space.clean.device) * space.mask
        radius = torch.rand(space.clean.shape[0], generator=self.generator).to(space.clean.device) * eps
        norm = direction.flatten(1).norm(dim=1).clamp_min(1e-12)
        return direction * (radius / norm).view(-1, 1, 1)  # inside the L2 ball, padding excluded

    @staticmethod
    def _project_l2(delta: torch.Tensor, eps: float) -> torch.Tensor:
        norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (delta.dim() - 1))
        return delta * torch.clamp(eps / norm, max=1.0)

    def _step(self, target: str, space: _Space, delta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        eps, alpha = self.epsilon[target], self.step_size[target]
        if space.mask is not None:  # L2 (text embeddings)
            grad = grad * space.mask
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1)
            return self._project_l2(delta + alpha * grad / norm, eps) * space.mask
        delta = (delta + alpha * grad.sign()).clamp(-eps, eps)
        if space.bounds is not None:
            lo, hi = space.bounds
            delta = (space.clean + delta).clamp(lo, hi) - space.clean
        return delta

    def _apply(self, batch: dict, spaces: dict[str, _Space], deltas: dict[str, torch.Tensor]) -> tuple[dict, Optional[torch.Tensor]]:
        """The batch's inputs with the perturbations applied, and the text-embedding offset (or None)."""
        inputs = {m: dict(v) for m, v in (batch.get("inputs") or {}).items()}
        text_delta = None
        for target, space in spaces.items():
            if space.key is None:
                text_delta = deltas[target]
            else:
                inputs[space.modality][space.key] = space.decode(space.clean + deltas[target])
        return inputs, text_delta

    def _loss(self, model: nn.Module, batch: dict, inputs: dict, text_delta: Optional[torch.Tensor],
              fixed: dict[str, EncoderOutput]) -> torch.Tensor:
        features = dict(fixed)
        for m, value in inputs.items():
            if m in features:
                continue
            with embedding_offset(model.encoders[m], text_delta if m == "text" else None):
                features[m] = model.encoders[m](value)  # directly: a frozen encoder still passes input gradients
        out = model(features=features, present=batch.get("present"), labels=batch.get("labels"))
        if out.loss is None:
            raise ValueError("adversarial examples need a loss: the batch has no labels for this model")
        return out.loss

    def _perturb(self, model: nn.Module, batch: dict) -> tuple[dict[str, _Space], dict[str, torch.Tensor]]:
        inputs = batch.get("inputs") or {}
        spaces = self._spaces(model, inputs)
        attacked = {s.modality for s in spaces.values()}
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                fixed = {**(batch.get("features") or {}),
                         **{m: model.encoders[m](v) for m, v in inputs.items() if m not in attacked}}
            deltas = {t: self._random_start(t, s) for t, s in spaces.items()}
            for _ in range(self.steps):
                for d in deltas.values():
                    d.requires_grad_(True)
                with torch.enable_grad(), self.autocast():
                    adv_inputs, text_delta = self._apply(batch, spaces, deltas)
                    loss = self._loss(model, batch, adv_inputs, text_delta, fixed)
                grads = torch.autograd.grad(loss.float(), list(deltas.values()), allow_unused=True)
                deltas = {t: self._step(t, spaces[t], d.detach(), torch.zeros_like(d) if g is None else g)
                          for (t, d), g in zip(deltas.items(), grads)}
        finally:
            model.train(was_training)
        return spaces, deltas

    def perturb(self, model: nn.Module, batch: dict) -> tuple[dict, Optional[torch.Tensor]]:
        """Adversarial inputs for `batch` against the unwrapped `model`: (inputs, text-embedding offset or None)."""
        spaces, deltas = self._perturb(model, batch)
        return self._apply(batch, spaces, deltas)

    # -- uses --------------------------------------------------------------------------------
    def training_output(self, model: nn.Module, unwrapped: nn.Module, batch: dict) -> ModelOutput:
        """The Trainer's step: attack `unwrapped`, then one forward of `model` on the adversarial (+ clean) batch."""
        spaces, deltas = self._perturb(unwrapped, batch)
        adv_inputs, text_delta = self._apply(batch, spaces, deltas)
        train_batch = {**batch, "inputs": adv_inputs}
        if self.mix:
            clean_inputs, _ = self._apply(batch, spaces, {t: torch.zeros_like(d) for t, d in deltas.items()})
            train_batch = _concat({**batch, "inputs": clean_inputs}, train_batch)
            if text_delta is not None:
                text_delta = torch.cat([torch.zeros_like(text_delta), text_delta])
        text = unwrapped.encoders["text"] if text_delta is not None else None
        with embedding_offset(text, text_delta):
            return forward_batch(model, train_batch)

    def attacked_output(self, model: nn.Module, batch: dict) -> ModelOutput:
        """The model's output on adversarial inputs (for `predict(..., forward_fn=)`: robust accuracy)."""
        inner = getattr(model, "module", model)  # a DDP-wrapped model: attack the module itself
        adv_inputs, text_delta = self.perturb(inner, batch)
        text = inner.encoders["text"] if text_delta is not None else None
        with torch.no_grad(), embedding_offset(text, text_delta):
            return forward_batch(model, {**batch, "inputs": adv_inputs})
