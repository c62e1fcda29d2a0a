"""Every fusion: shapes, gradients to every input, missing-modality invariance, configs, errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import fusion.registry
from encoders.base import EncoderOutput
from fusion import (
    Fusion,
    StandardizedConcat,
    UnknownFusionError,
    create_fusion,
    fusion_from_config,
    get_fusion_class,
    list_fusions,
    register_fusion,
)
from fusion.base import masked_softmax

ALL = ["concat", "late", "gated", "attention", "lowrank_tensor", "film"]
DIMS3 = {"text": 12, "image": 20, "audio": 8}
BATCH, TOKENS = 5, 4

# (name, kwargs) combinations checked; small widths keep the suite fast.
CASES = [
    ("concat", {}),
    ("late", {"combine": "mean"}),
    ("late", {"combine": "learned", "hidden_dim": 16}),
    ("gated", {}),
    ("attention", {"hidden_dim": 16, "num_layers": 2, "num_heads": 2, "dropout": 0.0}),
    ("lowrank_tensor", {"rank": 3}),
    ("film", {}),
    ("film", {"conditioner": "image"}),
]


def _ids(case):
    name, kwargs = case
    return name + "".join(
        f"-{k}={v}" for k, v in kwargs.items() if k in ("combine", "conditioner", "projection")
    )


def _dims(n: int) -> dict[str, int]:
    return dict(list(DIMS3.items())[:n])


def _features(dims: dict[str, int], tokens: bool, seed: int = 0, requires_grad: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    feats = {}
    for i, (m, d) in enumerate(sorted(dims.items())):
        pooled = torch.randn(BATCH, d, generator=g).requires_grad_(requires_grad)
        if tokens:
            toks = torch.randn(BATCH, TOKENS + i, d, generator=g).requires_grad_(requires_grad)
            mask = torch.ones(BATCH, TOKENS + i, dtype=torch.bool)
            mask[0, -2:] = False  # some padding
            feats[m] = EncoderOutput(pooled, toks, mask)
        else:
            feats[m] = EncoderOutput(pooled)
    return feats


def _modality_counts(name: str) -> list[int]:
    return [2, 3]


def _build(name: str, kwargs: dict, dims: dict[str, int], seed: int = 0):
    torch.manual_seed(seed)
    return create_fusion(name, dims, 6, **kwargs)


def test_registry_lists_every_fusion():
    infos = {i.name: i for i in list_fusions()}
    assert set(ALL) <= set(infos)
    assert infos["attention"].requires_tokens is True
    assert not any(infos[n].requires_tokens for n in ALL if n != "attention")
    assert all(i.description for i in infos.values())


def test_unknown_fusion_names_the_choices():
    with pytest.raises(ValueError, match="known: .*concat"):
        create_fusion("nope", {"text": 4}, 2)
    with pytest.raises(UnknownFusionError, match=r"unknown fusion 'gatd' \(did you mean 'gated'\?\)") as info:
        get_fusion_class("gatd")
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    assert [f.name for f in list_fusions("l*")] == ["late", "lowrank_tensor"]


def test_the_probe_fusion_is_private_but_old_models_using_it_still_load():
    assert "standardized" not in {f.name for f in list_fusions()}
    fused = StandardizedConcat({"text": 3, "image": 2})
    assert fused.name == "standardized" and get_fusion_class("standardized") is StandardizedConcat
    rebuilt = fusion_from_config(json.loads(json.dumps(fused.get_config())))
    assert type(rebuilt) is StandardizedConcat and rebuilt.output_dim == 3 + 2 + 2


def test_unknown_present_keys_raise_naming_the_modalities():
    fused = create_fusion("concat", {"text": 4, "image": 6}, 3)
    feats = {"text": torch.randn(2, 4), "image": torch.randn(2, 6)}
    with pytest.raises(KeyError, match=r"present names unknown modalities \['imgae'\]; the known modalities are "
                                       r"\['image', 'text'\]"):
        fused(feats, {"imgae": torch.tensor([True, False])})  # a typo would leave the image present everywhere
    fused(feats, {"image": torch.tensor([True, False])})


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_forward_backward_reaches_every_input(case):
    name, kwargs = case
    for n in _modality_counts(name):
        dims = _dims(n)
        fusion = _build(name, kwargs, dims)
        tokens = fusion.requires_tokens
        feats = _features(dims, tokens=tokens, requires_grad=True)
        out = fusion(feats)
        assert out.shape == (BATCH, 6)
        assert torch.isfinite(out).all()
        loss = (out * torch.randn_like(out)).sum()
        loss.backward()
        for m, f in feats.items():
            x = f.tokens if tokens else f.pooled
            assert x.grad is not None and x.grad.abs().sum() > 0, f"{name}: no gradient to {m}"
        for pname, p in fusion.named_parameters():
            assert p.grad is not None, f"{name}: parameter {pname} got no gradient"
            assert torch.isfinite(p.grad).all()


def test_attention_uses_pooled_vector_when_no_tokens():
    dims = _dims(2)
    fusion = _build("attention", CASES[4][1], dims)
    feats = _features(dims, tokens=True, requires_grad=True)
    feats["image"] = EncoderOutput(feats["image"].pooled)  # pooled only -> one-token sequence
    out = fusion(feats)
    out.sum().backward()
    assert out.shape == (BATCH, 6)
    assert feats["image"].pooled.grad.abs().sum() > 0
    assert feats["text"].tokens.grad.abs().sum() > 0


def _perturbed(feats: dict, present: dict, scale: float = 1e4, seed: int = 99) -> dict:
    """Copy of `feats` where every absent sample's pooled features and tokens (and padded tokens) are huge noise."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m, f in feats.items():
        absent = ~present[m]
        pooled = f.pooled.detach().clone()
        pooled[absent] = scale * torch.randn(int(absent.sum()), pooled.shape[1], generator=g)
        tokens = f.tokens
        if tokens is not None:
            tokens = tokens.detach().clone()
            tokens[absent] = scale * torch.randn(int(absent.sum()), *tokens.shape[1:], generator=g)
            tokens[~f.mask] = scale  # padding never matters either
        out[m] = EncoderOutput(pooled, tokens, f.mask)
    return out


def _present(dims: dict[str, int]) -> dict[str, torch.Tensor]:
    """Sample 0 has everything; each modality is absent for some sample; sample 4 has nothing."""
    mods = sorted(dims)
    present = {m: torch.ones(BATCH, dtype=torch.bool) for m in mods}
    for i, m in enumerate(mods):
        present[m][1 + i % 3] = False
    present[mods[0]][2] = False
    for m in mods:
        present[m][4] = False
    return present


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_absent_modality_cannot_influence_output(case):
    name, kwargs = case
    for n in _modality_counts(name):
        dims = _dims(n)
        fusion = _build(name, kwargs, dims).eval()
        feats = _features(dims, tokens=fusion.requires_tokens)
        present = _present(dims)
        with torch.no_grad():
            base = fusion(feats, present)
            noisy = fusion(_perturbed(feats, present), present)
        assert torch.isfinite(base).all() and torch.isfinite(noisy).all()
        torch.testing.assert_close(noisy, base, rtol=0, atol=1e-6)
        # The control: changing a *present* modality does change that sample's output.
        m0 = sorted(dims)[0]
        present_noise = {m: ~p if m == m0 else torch.zeros_like(p) for m, p in present.items()}
        with torch.no_grad():
            changed = fusion(_perturbed(feats, present_noise, scale=3.0), present)
        assert not torch.allclose(changed[0], base[0]), f"{name}: output ignores modality {m0}"


def test_masked_softmax_all_masked_is_zero_and_finite():
    logits = torch.randn(3, 4)
    keep = torch.tensor([[True, False, True, False], [False] * 4, [True] * 4])
    w = masked_softmax(logits, keep, dim=1)
    assert torch.isfinite(w).all()
    assert torch.equal(w[1], torch.zeros(4))
    assert torch.equal(w[0][~keep[0]], torch.zeros(2))
    torch.testing.assert_close(w[[0, 2]].sum(1), torch.ones(2))


def test_late_mean_is_plain_average_over_present():
    dims = _dims(3)
    fusion = _build("late", {"combine": "mean"}, dims).eval()
    feats = _features(dims, tokens=False)
    present = _present(dims)
    with torch.no_grad():
        out = fusion(feats, present)
        heads = {m: fusion.heads[m](feats[m].pooled) for m in dims}
    for i in range(BATCH):
        here = [heads[m][i] for m in sorted(dims) if present[m][i]]
        expected = torch.stack(here).mean(0) if here else torch.zeros(6)
        torch.testing.assert_close(out[i], expected)


def test_film_absent_conditioner_means_identity_modulation():
    dims = _dims(2)  # image, text; conditioner defaults to text
    fusion = _build("film", {}, dims).eval()
    assert fusion.conditioner == "text"
    with torch.no_grad():
        fusion.film_generator[-1].weight.normal_(std=2.0)
        fusion.film_generator[-1].bias.normal_(std=2.0)
    identity = copy.deepcopy(fusion)
    with torch.no_grad():  # gamma = 1, beta = 0 for every sample
        identity.film_generator[-1].weight.zero_()
        identity.film_generator[-1].bias.zero_()
    feats = _features(dims, tokens=False)
    present = {
        "text": torch.tensor([True, False, True, False, False]),
        "image": torch.ones(BATCH, dtype=torch.bool),
    }
    with torch.no_grad():
        out, ref = fusion(feats, present), identity(feats, present)
    torch.testing.assert_close(out[~present["text"]], ref[~present["text"]], rtol=0, atol=1e-6)
    assert not torch.allclose(out[present["text"]], ref[present["text"]])


def test_lowrank_absent_modality_uses_only_the_constant_factor():
    dims = _dims(2)
    fusion = _build("lowrank_tensor", {"rank": 2, "pre_norm": False}, dims).eval()
    feats = _features(dims, tokens=False)
    present = {
        "image": torch.tensor([False, True, True, True, True]),
        "text": torch.ones(BATCH, dtype=torch.bool),
    }
    with torch.no_grad():
        out = fusion(feats, present)
        x_t = torch.cat([feats["text"].pooled[0], torch.ones(1)])
        f_text = torch.einsum("d,rdo->ro", x_t, fusion.factors["text"])
        f_image = fusion.factors["image"][:, -1, :]  # the factor of [0, ..., 0, 1]
        expected = (fusion.fusion_weights[:, None] * f_text * f_image).sum(0) + fusion.fusion_bias
    torch.testing.assert_close(out[0], expected)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_config_round_trip_rebuilds_same_architecture(case):
    name, kwargs = case
    dims = _dims(2)
    fusion = _build(name, kwargs, dims).eval()
    config = json.loads(json.dumps(fusion.get_config()))
    rebuilt = fusion_from_config(config).eval()
    rebuilt.load_state_dict(fusion.state_dict(), strict=True)
    feats = _features(dims, tokens=fusion.requires_tokens)
    with torch.no_grad():
        assert torch.equal(rebuilt(feats), fusion(feats))


def test_bad_inputs_raise_clear_errors():
    fusion = create_fusion("concat", {"text": 4, "image": 6}, 3)
    with pytest.raises(KeyError, match="missing \\['text'\\]"):
        fusion({"image": EncoderOutput(torch.randn(2, 6))})
    with pytest.raises(ValueError, match="'text'.*expected \\[B, 4\\]"):
        fusion({"image": EncoderOutput(torch.randn(2, 6)), "text": EncoderOutput(torch.randn(2, 5))})
    with pytest.raises(ValueError, match="unknown fusion 'contrastive'"):
        create_fusion("contrastive", DIMS3, 4)  # the two-tower head is not a fusion (see ContrastiveHead)
    with pytest.raises(ValueError, match="combine"):
        create_fusion("late", {"text": 4}, 2, combine="max")
    with pytest.raises(TypeError, match="create_fusion\\('gated'\\)"):
        create_fusion("gated", {"text": 4}, 2, rank=3)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_plain_pooled_tensors_work_like_encoder_outputs(case):
    name, kwargs = case
    dims = _dims(2)
    fusion = _build(name, kwargs, dims).eval()
    feats = _features(dims, tokens=False)
    present = _present(dims)
    with torch.no_grad():
        wrapped = fusion(feats, present)
        plain = fusion({m: f.pooled for m, f in feats.items()}, present)
    assert torch.equal(plain, wrapped)
    with pytest.raises(TypeError, match="features\\['image'\\] must be an EncoderOutput or a \\[B, D\\] tensor"):
        fusion({"image": [1.0], "text": feats["text"]})


def test_user_fusion_registers_builds_and_round_trips():
    @register_fusion("test_sum_of_projections", "sum of per-modality projections")
    class SumFusion(Fusion):
        def __init__(self, input_dims, output_dim, bias: bool = True):
            super().__init__(input_dims, output_dim)
            self.config_kwargs = {"bias": bias}
            self.proj = torch.nn.ModuleDict({m: torch.nn.Linear(d, output_dim, bias=bias) for m, d in self.input_dims.items()})

        def forward(self, features, present=None):
            features, present = self.prepare(features, present)
            return sum(self.proj[m](features[m].pooled) * present[m][:, None] for m in self.modalities)

    dims = _dims(2)
    fusion = create_fusion("test_sum_of_projections", dims, 6, bias=False)
    assert {i.name for i in list_fusions()} >= {"test_sum_of_projections"}
    rebuilt = fusion_from_config(json.loads(json.dumps(fusion.get_config())))
    rebuilt.load_state_dict(fusion.state_dict())
    feats = _features(dims, tokens=False)
    assert torch.equal(rebuilt(feats), fusion(feats)) and rebuilt.proj["text"].bias is None
    with pytest.raises(ValueError, match="already registered"):
        register_fusion("concat", "clash")(SumFusion)
    with pytest.raises(TypeError, match="not a subclass of fusion.Fusion"):
        register_fusion("test_not_a_fusion")(dict)


def test_register_fusion_as_a_call_and_under_two_names_keeps_the_first():
    class Doubled(Fusion):
        """Twice the first modality's projection."""

        def __init__(self, input_dims, output_dim):
            super().__init__(input_dims, output_dim)
            self.proj = torch.nn.Linear(next(iter(self.input_dims.values())), output_dim)

        def forward(self, features, present=None):
            features, present = self.prepare(features, present)
            return 2 * self.proj(features[self.modalities[0]].pooled)

    with fusion.registry.FUSIONS.scratch():
        assert register_fusion("test_doubled", Doubled) is Doubled  # a plain call, as register_encoder / register_task
        assert register_fusion("test_doubled_alias", cls=Doubled) is Doubled
        assert Doubled.name == "test_doubled"  # not overwritten by the second name
        built = create_fusion("test_doubled_alias", {"text": 3}, 2)
        assert fusion_from_config(built.get_config()).get_config() == built.get_config()
        assert {"test_doubled": "Twice the first modality's projection."}.items() <= {
            f.name: f.description for f in list_fusions("test_*")}.items()
    assert "test_doubled" not in {f.name for f in list_fusions()}


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_bf16_autocast_forward_backward(case):
    name, kwargs = case
    dims = _dims(2)
    fusion = _build(name, kwargs, dims)
    feats = _features(dims, tokens=fusion.requires_tokens)
    feats["text"] = EncoderOutput(
        *(t.bfloat16() if t is not None and t.is_floating_point() else t for t in feats["text"])
    )
    present = _present(dims)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fusion(feats, present)
        loss = out.float().square().mean()
    loss.backward()
    assert out.shape == (BATCH, 6) and torch.isfinite(out.float()).all() and torch.isfinite(loss)
