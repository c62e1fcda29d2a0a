"""The one registry idiom (`Registry`) that encoder kinds, fusions, tasks, model types and demos share."""

from __future__ import annotations

import pytest

import encoders.registry
import fusion.registry
import multimodal.data.demos
import multimodal.models.base
import multimodal.registry
from encoders.registry import DuplicateNameError, Registry, UnknownNameError


def _checked(name: str, obj: object) -> None:
    if not callable(obj):
        raise TypeError(f"{name}: not callable")


def test_register_as_call_or_decorator_get_and_contains():
    reg: Registry = Registry("widget")
    assert reg.register("plain", len) is len

    @reg.register("decorated", colour="red")
    def make() -> int:
        return 1

    assert make() == 1 and reg.get("decorated") is make and reg.entry("decorated").info == {"colour": "red"}
    assert "plain" in reg and reg.is_registered("plain") and not reg.is_registered(3) and len(reg) == 2
    assert reg.list() == ["plain", "decorated"]  # registration order


def test_unknown_name_is_a_keyerror_with_a_suggestion_and_the_known_names():
    reg: Registry = Registry("widget")
    for name in ("concat", "gated", "attention"):
        reg.register(name, object())
    with pytest.raises(UnknownNameError) as info:
        reg.get("gatd")
    assert isinstance(info.value, KeyError) and info.value.name == "gatd"
    assert str(info.value) == "unknown widget 'gatd' (did you mean 'gated'?); known: concat, gated, attention"
    with pytest.raises(KeyError, match=r"unknown widget 'zzz'; known: concat"):  # nothing close: no suggestion
        reg.get("zzz")


def test_list_filters_with_wildcards_hidden_and_aliases():
    reg: Registry = Registry("task")
    reg.register("single_label", int)
    reg.register("multi_label", float)
    reg.register("retrieval", str, aliases=("contrastive",))
    reg.register("internal_probe", bytes, hidden=True)
    assert reg.list("*_label") == ["single_label", "multi_label"]
    assert reg.list(["single*", "ret*"]) == ["single_label", "retrieval"]
    assert "internal_probe" not in reg.list() and reg.list("internal*", hidden=True) == ["internal_probe"]
    assert reg.get("internal_probe") is bytes  # hidden: not listed, still found (old saved models load)
    assert reg.get("contrastive") is str and reg.canonical("contrastive") == "retrieval"
    assert reg.list("c*", aliases=True) == ["contrastive"] and reg.list("c*") == []


def test_duplicates_refused_unless_override_and_same_object_is_a_no_op():
    reg: Registry = Registry("fusion")
    reg.register("concat", int, note="first")
    assert reg.register("concat", int, note="again") is int and reg.entry("concat").info == {"note": "first"}
    with pytest.raises(DuplicateNameError, match=r"fusion 'concat' is already registered to builtins.int.*override=True"):
        reg.register("concat", float)
    assert isinstance(DuplicateNameError("x"), ValueError)  # what register_* raised before
    reg.register("retrieval", str, aliases=("contrastive",))
    with pytest.raises(DuplicateNameError, match="'contrastive'"):
        reg.register("other", bytes, aliases=("contrastive",))
    assert reg.register("concat", float, override=True) is float and reg.get("concat") is float


def test_validation_hook_case_folding_scratch_and_unregister():
    reg: Registry = Registry("encoder kind", validate=_checked, casefold=True)
    with pytest.raises(TypeError, match="not callable"):
        reg.register("bad", 3)
    assert "bad" not in reg  # nothing half-registered
    reg.register(" Text ", len)
    assert reg.get("TEXT") is len and reg.list("t*") == ["text"] and reg.list("T*") == ["text"]
    with pytest.raises(TypeError, match="must be a string"):
        reg.register(None, len)
    with reg.scratch():
        reg.register("image", abs)
        assert reg.list() == ["text", "image"]
    assert reg.list() == ["text"]  # the block's registrations are undone
    assert reg.unregister("text") is len and len(reg) == 0


def test_every_table_is_a_registry_with_its_old_error_types():
    tables = {
        "encoder kind": encoders.registry.ENCODERS,
        "fusion": fusion.registry.FUSIONS,
        "task": multimodal.registry.TASKS,
        "model_type": multimodal.models.base.MODEL_TYPES,
        "demo": multimodal.data.demos.DEMOS,
    }
    for what, table in tables.items():
        assert isinstance(table, Registry) and table.what == what and len(table) >= 4
        with pytest.raises(UnknownNameError, match=f"unknown {what} 'nope'"):
            table.get("nope")
    # Callers that caught the old errors still do: EncoderError, ValueError (fusions), KeyError (tasks, demos).
    with pytest.raises(encoders.EncoderError):
        encoders.get_encoder_class("nope")
    with pytest.raises(ValueError):
        fusion.get_fusion_class("nope")
    assert multimodal.registry.Registry is Registry and multimodal.UnknownNameError is UnknownNameError
    assert fusion.Registry is Registry


def test_model_types_are_no_longer_silently_overwritten_and_can_be_listed():
    from multimodal.models.base import MODEL_TYPES, list_model_types, register_model_type
    from multimodal.models.fused import MultimodalModel

    assert {"fused", "dual_encoder", "multitask", "prompt_classifier"} <= set(list_model_types())

    class Other(MultimodalModel):
        """Another fused model."""

    with MODEL_TYPES.scratch():
        with pytest.raises(DuplicateNameError, match=r"model_type 'fused' is already registered to "
                                                     r"multimodal.models.fused.MultimodalModel"):
            register_model_type("fused")(Other)
        assert register_model_type("other_fused", Other) is Other and Other.model_type == "other_fused"
        assert list_model_types("other*") == ["other_fused"] and MultimodalModel.model_type == "fused"
    assert "other_fused" not in list_model_types()


def test_demos_share_the_idiom():
    from multimodal.data.demos import get_demo, list_demos, register_demo

    demo = get_demo("text_image")
    assert register_demo(demo) is demo  # the same demo again: a no-op
    with pytest.raises(DuplicateNameError, match="demo 'text_image' is already registered to a Demo"):
        register_demo(type(demo)(**{**demo.__dict__, "default_size": 1}))
    with pytest.raises(KeyError, match=r"unknown demo 'text_imag' \(did you mean 'text_image'\?\)"):
        get_demo("text_imag")
    assert [d.name for d in list_demos("*_pairs")] == ["audio_text_pairs", "image_audio_pairs", "image_text_pairs"]
