"""Why a classifier predicted what it did: attributions per input, contributions per modality, attention maps.

* **Integrated gradients** (Captum) of the target class's probability, one example at a time, the other
  modalities held at their encoded features: over image *pixels* (baseline: a black image; map = sum over
  channels), over the *log-mel spectrogram* the ``audio-mel`` encoder computes (baseline: zeros, the level
  of padding; swapped in by a hook on its front end), over the float input of other audio encoders
  (``waveform`` / ``input_values``, summed into 10 ms frames), and over *text tokens* (Captum's layer IG on
  the word embeddings; baseline: padding ids in place of the words, special tokens kept).
* **Modality contributions**: exact Shapley values over the modalities, the value of a coalition being the
  target's probability when only its modalities are marked present (the fusions guarantee an absent
  modality never influences the output). They add up to p(all) - p(none). 2^M forwards of the fusion and
  head on encoder features computed once.
* **Attention** (attention fusion only): the [CLS] query's attention over every token in the last layer,
  averaged over heads, per modality, plus each modality's share of it.
* `deletion_check`: the probability drop when the top-attributed fraction of an input is set to its
  baseline, against the same fraction chosen at random: the sanity check of the attributions.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from encoders.base import EncoderOutput
from multimodal.training.adversarial import AUDIO_INPUT_KEYS, text_embedding_layer


@dataclass
class Attribution:
    """One modality's attributions for one example: `values` over `display` (same layout)."""

    kind: str  # image | spectrogram | frames | tokens
    values: np.ndarray  # image/spectrogram: [H, W]; frames / tokens: [T]
    display: Any  # image: uint8 [H, W, 3]; spectrogram: [n_mels, frames]; tokens: list[str]; frames: None
    attention: Optional[np.ndarray] = None  # [CLS] attention over this modality's tokens (attention fusion)


@dataclass
class Explanation:
    """Everything `explain` found for one example."""

    position: int
    target: int
    probabilities: list[float]
    label: Optional[int] = None
    shapley: dict[str, float] = field(default_factory=dict)
    p_all: float = float("nan")
    p_none: float = float("nan")
    attention_share: dict[str, float] = field(default_factory=dict)
    attributions: dict[str, Attribution] = field(default_factory=dict)


def target_probability(logits: torch.Tensor, target: int) -> torch.Tensor:
    """p(target) per row of single-label logits."""
    return F.softmax(logits.float(), dim=-1)[:, target]


def _expand(value: Any, n: int) -> Any:
    """Batch-of-one tensors / EncoderOutputs / dicts repeated to batch `n` (views, no copy)."""
    if isinstance(value, torch.Tensor):
        return value.expand(n, *value.shape[1:])
    if isinstance(value, EncoderOutput):
        return EncoderOutput(*(None if v is None else _expand(v, n) for v in value))
    if isinstance(value, dict):
        return {k: _expand(v, n) for k, v in value.items()}
    return value


@torch.no_grad()
def encode_all(model: nn.Module, batch: dict) -> dict[str, EncoderOutput]:
    """Every modality's encoder output for a batch (cached features used where the batch has them)."""
    feats = dict(batch.get("features") or {})
    for m, inputs in (batch.get("inputs") or {}).items():
        if m not in feats:
            feats[m] = model.encoders[m](inputs)
    return feats


def _present(batch: dict, feats: dict) -> dict[str, torch.Tensor]:
    n = next(iter(feats.values())).pooled.shape[0]
    given = batch.get("present") or {}
    return {m: given.get(m, torch.ones(n, dtype=torch.bool)).bool() for m in feats}


@torch.no_grad()
def shapley_values(model: nn.Module, feats: dict[str, EncoderOutput], present: dict[str, torch.Tensor],
                   target: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Exact Shapley value of each modality for p(target) per example; also p(all present) and p(none)."""
    mods = sorted(feats)
    n_mod = len(mods)
    rows = torch.arange(len(target))
    value: dict[frozenset, torch.Tensor] = {}
    for size in range(n_mod + 1):
        for coalition in itertools.combinations(mods, size):
            mask = {m: present[m] & (m in coalition) for m in mods}
            logits = model(features=feats, present=mask).logits
            value[frozenset(coalition)] = F.softmax(logits.float(), -1)[rows, target]
    phi = {}
    for m in mods:
        others = [o for o in mods if o != m]
        total = torch.zeros(len(target))
        for size in range(n_mod):
            weight = math.factorial(size) * math.factorial(n_mod - size - 1) / math.factorial(n_mod)
            for coalition in itertools.combinations(others, size):
                s = frozenset(coalition)
                total += weight * (value[s | {m}] - value[s])
        phi[m] = total
    return phi, value[frozenset(mods)], value[frozenset()]


class _Forward:
    """p(target) of one example as a function of one modality's input; the others fixed at their features."""

    def __init__(self, model: nn.Module, feats: dict, present: dict, modality: str, target: int) -> None:
        self.model, self.modality, self.target = model, modality, target
        self.fixed = {m: f for m, f in feats.items() if m != modality}
        self.present = present

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        n = next(iter(inputs.values())).shape[0]
        feats = {**_expand(self.fixed, n), self.modality: self.model.encoders[self.modality](inputs)}
        logits = self.model(features=feats, present=_expand(self.present, n)).logits
        return target_probability(logits, self.target)


def image_space(encoder: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised float pixels and the normalised black-image baseline (uint8 inputs of timm encoders)."""
    scale, shift = getattr(encoder, "pixel_scale", None), getattr(encoder, "pixel_shift", None)
    if pixels.dtype == torch.uint8 and scale is not None:
        x = pixels.float() * scale + shift
        return x, shift.expand_as(x).clone()
    return pixels.float(), torch.zeros_like(pixels, dtype=torch.float32)


def _display_image(pixels: torch.Tensor) -> np.ndarray:
    if pixels.dtype == torch.uint8:
        return pixels[0].permute(1, 2, 0).cpu().numpy()
    p = pixels[0].float()
    p = (p - p.min()) / (p.max() - p.min()).clamp_min(1e-8)
    return (p.permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)


def attribute_image(fwd: _Forward, inputs: dict, steps: int) -> Attribution:
    """IG over normalised pixels; the map is the sum over channels."""
    from captum.attr import IntegratedGradients

    encoder = fwd.model.encoders[fwd.modality]
    x, baseline = image_space(encoder, inputs["pixel_values"])
    ig = IntegratedGradients(lambda p: fwd({**inputs, "pixel_values": p}))
    attr = ig.attribute(x, baselines=baseline, n_steps=steps, internal_batch_size=steps)
    return Attribution("image", attr[0].sum(0).detach().cpu().numpy(), _display_image(inputs["pixel_values"]))


class _SpectrogramSwap:
    """Context: the audio-mel front end returns `spec` (expanded to the batch) instead of what it computed."""

    def __init__(self, encoder: nn.Module, spec: torch.Tensor) -> None:
        self.encoder, self.spec = encoder, spec

    def __enter__(self) -> _SpectrogramSwap:
        self.handle = self.encoder.frontend.register_forward_hook(lambda _m, _a, out: (self.spec, out[1]))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.handle.remove()


def attribute_audio(fwd: _Forward, inputs: dict, steps: int) -> Attribution:
    """IG over the log-mel spectrogram (audio-mel), or over the float input summed into 10 ms frames."""
    from captum.attr import IntegratedGradients

    encoder = fwd.model.encoders[fwd.modality]
    frontend = getattr(encoder, "frontend", None)
    if frontend is not None and "waveform" in inputs:
        with torch.no_grad():
            spec, _ = frontend(inputs["waveform"], inputs.get("lengths", torch.tensor([inputs["waveform"].shape[-1]])))

        def through_spectrogram(s: torch.Tensor) -> torch.Tensor:
            with _SpectrogramSwap(encoder, s):
                return fwd({k: _expand(v, s.shape[0]) for k, v in inputs.items()})

        attr = IntegratedGradients(through_spectrogram).attribute(spec, baselines=torch.zeros_like(spec),
                                                                   n_steps=steps, internal_batch_size=steps)
        return Attribution("spectrogram", attr[0, 0].detach().cpu().numpy(), spec[0, 0].cpu().numpy())
    key = next((k for k in AUDIO_INPUT_KEYS if k in inputs and inputs[k].is_floating_point()), None)
    if key is None:
        raise ValueError(f"no float audio input to attribute ({sorted(inputs)})")
    x = inputs[key].float()
    attr = IntegratedGradients(lambda v: fwd({**{k: _expand(t, v.shape[0]) for k, t in inputs.items()}, key: v}))
    values = attr.attribute(x, baselines=torch.zeros_like(x), n_steps=steps, internal_batch_size=steps)[0]
    values = values.detach().cpu().numpy()
    if values.ndim == 1:  # a waveform: 10 ms frames at 16 kHz
        hop = 160
        values = np.add.reduceat(values, np.arange(0, len(values), hop))
    else:  # features [n_mels, T] or [T, n_mels]: sum over the shorter axis
        values = values.sum(axis=int(np.argmin(values.shape)))
    return Attribution("frames", values, None)


def attribute_text(fwd: _Forward, inputs: dict, steps: int) -> Attribution:
    """Layer IG on the word embeddings; baseline: padding ids in place of the non-special tokens."""
    from captum.attr import LayerIntegratedGradients

    encoder = fwd.model.encoders[fwd.modality]
    tokenizer = getattr(encoder, "tokenizer", None)
    ids = inputs["input_ids"]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    pad = getattr(tokenizer, "pad_token_id", None) or 0
    baseline = ids.clone()
    for j in range(ids.shape[1]):
        if int(ids[0, j]) not in special:
            baseline[0, j] = pad
    mask = inputs.get("attention_mask", torch.ones_like(ids))
    lig = LayerIntegratedGradients(lambda t: fwd({**inputs, "input_ids": t, "attention_mask": _expand(mask, t.shape[0])}),
                                   text_embedding_layer(encoder))
    attr = lig.attribute(ids, baselines=baseline, n_steps=steps, internal_batch_size=steps)
    values = attr[0].sum(-1).detach().cpu().numpy()
    real = mask[0].bool().cpu().numpy()
    tokens = tokenizer.convert_ids_to_tokens(ids[0].tolist()) if tokenizer is not None else [str(i) for i in ids[0].tolist()]
    return Attribution("tokens", values[real], [t for t, keep in zip(tokens, real) if keep])


ATTRIBUTORS = {"image": attribute_image, "audio": attribute_audio, "text": attribute_text}


@torch.no_grad()
def attention_maps(model: nn.Module, feats: dict, present: dict) -> Optional[tuple[dict[str, np.ndarray], dict[str, float]]]:
    """Last-layer [CLS] attention (mean over heads) over each modality's tokens, and each modality's share."""
    fusion = getattr(model, "fusion", None)
    layers = getattr(getattr(fusion, "encoder", None), "layers", None)
    if fusion is None or not getattr(fusion, "requires_tokens", False) or layers is None:
        return None
    captured: dict[str, Any] = {}
    last = layers[-1]
    handle = last.register_forward_pre_hook(
        lambda _m, args, kwargs: captured.update(x=args[0], mask=kwargs.get("src_key_padding_mask")), with_kwargs=True)
    try:
        model(features=feats, present=present)
    finally:
        handle.remove()
    x = last.norm1(captured["x"]) if getattr(last, "norm_first", False) else captured["x"]
    _, weights = last.self_attn(x, x, x, key_padding_mask=captured["mask"], need_weights=True, average_attn_weights=True)
    cls = weights[0, 0].cpu().numpy()  # [L]: CLS, then each modality's tokens in fusion order
    maps, share, start = {}, {}, 1
    for m in fusion.modalities:
        out = feats[m]
        count = out.tokens.shape[1] if out.tokens is not None else 1
        maps[m] = cls[start:start + count]
        share[m] = float(maps[m].sum())
        start += count
    return maps, share


def explain_batch(model: nn.Module, batch: dict, target: Optional[int] = None, steps: int = 32,
                  modalities: Optional[list[str]] = None) -> Explanation:
    """Explain one example (a collated batch of one): Shapley contributions, attributions, attention."""
    model.eval()
    feats = encode_all(model, batch)
    present = _present(batch, feats)
    with torch.no_grad():
        logits = model(features=feats, present=present).logits
    probs = F.softmax(logits.float(), -1)[0]
    target = int(probs.argmax()) if target is None else int(target)
    labels = batch.get("labels")
    exp = Explanation(int(batch["index"][0]), target, probs.tolist(), int(labels[0]) if labels is not None else None)
    if getattr(model, "fusion", None) is not None:
        phi, p_all, p_none = shapley_values(model, feats, present, torch.tensor([target]))
        exp.shapley, exp.p_all, exp.p_none = {m: float(v[0]) for m, v in phi.items()}, float(p_all[0]), float(p_none[0])
    attention = attention_maps(model, feats, present)
    if attention is not None:
        exp.attention_share = attention[1]
    for m in modalities or sorted(feats):
        inputs = (batch.get("inputs") or {}).get(m)
        if inputs is None or not bool(present[m][0]) or m not in ATTRIBUTORS:
            continue
        with torch.enable_grad():
            exp.attributions[m] = ATTRIBUTORS[m](_Forward(model, feats, present, m, target), inputs, steps)
        if attention is not None:
            exp.attributions[m].attention = attention[0][m]
    return exp


@torch.no_grad()
def deletion_check(model: nn.Module, batch: dict, modality: str, attribution: Attribution, target: int,
                   fraction: float = 0.1, seed: int = 0) -> tuple[float, float, float]:
    """p(target) of the example as is, with its top-`fraction` attributed pixels / tokens set to the baseline,
    and with the same number chosen at random (pixels: all channels; tokens: the padding id)."""
    feats = encode_all(model, batch)
    present = _present(batch, feats)
    fwd = _Forward(model, feats, present, modality, target)
    inputs = batch["inputs"][modality]
    rng = np.random.default_rng(seed)
    if attribution.kind == "image":
        x, base = image_space(model.encoders[modality], inputs["pixel_values"])
        flat = attribution.values.reshape(-1)
        k = max(1, int(round(fraction * flat.size)))

        def deleted(order: np.ndarray) -> float:
            keep = torch.ones(flat.size, dtype=torch.bool)
            keep[torch.as_tensor(order[:k])] = False
            keep = keep.view(1, 1, *attribution.values.shape)
            return float(fwd({**inputs, "pixel_values": torch.where(keep, x, base)})[0])

        return float(fwd({**inputs, "pixel_values": x})[0]), deleted(np.argsort(-flat)), deleted(rng.permutation(flat.size))
    if attribution.kind != "tokens":
        raise ValueError(f"deletion_check handles image and token attributions, not {attribution.kind}")
    ids = inputs["input_ids"]
    special = set(getattr(model.encoders[modality].tokenizer, "all_special_ids", []) or [])
    pad = getattr(model.encoders[modality].tokenizer, "pad_token_id", 0) or 0
    kept = [j for j in range(ids.shape[1]) if int(inputs["attention_mask"][0, j])]  # what attribution.values cover
    real = [j for j in kept if int(ids[0, j]) not in special]  # words, not [CLS]/[SEP]
    position = {j: i for i, j in enumerate(kept)}
    scores = np.array([attribution.values[position[j]] for j in real])
    k = max(1, int(round(fraction * len(real))))

    def deleted_tokens(order: np.ndarray) -> float:
        changed = ids.clone()
        for i in order[:k]:
            changed[0, real[i]] = pad
        return float(fwd({**inputs, "input_ids": changed})[0])

    return float(fwd(inputs)[0]), deleted_tokens(np.argsort(-scores)), deleted_tokens(rng.permutation(len(real)))
