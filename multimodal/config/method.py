"""``train.method``: one key for the fine-tuning method, mapped onto the switches that existed before it.

=============  =====================================================================================
method         switches it sets
=============  =====================================================================================
probe          ``train.linear_probe=true``, ``model.freeze_encoders=true``; ``pool_stages: all`` (below)
head           ``model.freeze_encoders=true`` (fusion + head trained, features from the cache); ``pool_stages: all``
lora           ``model.peft`` (rank 8 unless given), encoders' base weights frozen
last_blocks    ``model.unlock_last_blocks`` (the last 2 blocks of every encoder unless given)
full           ``model.freeze_encoders=false`` (every encoder trains)
auto           none here: the runner fits the probe, then the trained candidates that the data size and
               ``train.time_budget_s`` allow, and keeps the best on validation (`multimodal.training.auto`)
null           none: the switches decide, as in configs written before this key
=============  =====================================================================================

The frozen methods also pool every backbone stage of the encoders that take ``pool_stages`` (image and
audio-mel) unless ``model.encoder_kwargs`` sets it (`FROZEN_POOL_STAGES`). An explicit method overrides the
switches it names. ``auto`` applies only when no switch chose a method
(`switches_chosen`); otherwise the run follows the switches, as before.
"""

from __future__ import annotations

import inspect
from typing import Any

from multimodal.config.schema import ConfigError, PeftConfig

METHODS = ("probe", "head", "lora", "last_blocks", "full")
"""The methods ``train.method`` names (besides auto), cheapest first: method auto's candidates, in order."""
LAST_BLOCKS = 2  # blocks unlocked per encoder by method last_blocks when model.unlock_last_blocks is empty
FROZEN_METHODS = ("probe", "head")
FROZEN_POOL_STAGES = "all"
"""``pool_stages`` that the frozen methods give every encoder that takes the option and whose
``model.encoder_kwargs`` leave it unset: the global average of each backbone stage appended to the pooled
feature, measured on the real dev sets (BENCHMARKS.md, section 10d: +1.0 to +5.8 points for a logistic
regression on the packaged EfficientNet-Lite0, never worse). Trained methods keep the encoder's own default
(none): through full fine-tuning the stages cost 2.5 points on the one set measured."""


def switches_chosen(cfg: Any) -> bool:
    """True when the config's own switches pick a method (then ``train.method: auto`` leaves them in charge)."""
    model, train = cfg.model, cfg.train
    return bool(train.linear_probe or train.probe_init or model.peft is not None or model.unlock_last_blocks
                or model.freeze_encoders or model.unfreeze_after_epochs is not None)


def apply_method(cfg: Any) -> Any:
    """Set the switches of an explicit ``train.method`` (in place; auto and null change nothing); returns `cfg`."""
    method, model, train = cfg.train.method, cfg.model, cfg.train
    if method in (None, "auto"):
        return cfg
    if method not in METHODS:
        raise ConfigError(f"train.method: unknown method {method!r}; choose auto, {', '.join(METHODS)} or null")
    train.linear_probe = method == "probe"
    model.freeze_encoders = method in ("probe", "head")
    if method == "probe":
        train.probe_init = False
    model.peft = (model.peft or PeftConfig()) if method == "lora" else None
    model.unlock_last_blocks = (model.unlock_last_blocks or {m: LAST_BLOCKS for m in model.encoders}
                                ) if method == "last_blocks" else {}
    if method != "full":
        model.unfreeze_after_epochs = None
    if method in FROZEN_METHODS:
        pool_frozen_stages(model)
    return cfg


def pool_frozen_stages(model: Any) -> None:
    """Set `FROZEN_POOL_STAGES` in ``model.encoder_kwargs`` for every encoder whose kind takes ``pool_stages``
    and whose kwargs do not set it (in place)."""
    from encoders._timm import POOL_STAGES_FIELD as POOL_STAGES  # the option's one spelling
    from encoders.factory import parse_spec
    from encoders.registry import get_encoder_class

    kwargs = dict(model.encoder_kwargs or {})
    for modality, spec in (model.encoders or {}).items():
        own = kwargs.get(modality) or {}
        if spec is None or not isinstance(own, dict) or POOL_STAGES in own:
            continue
        try:
            takes = POOL_STAGES in inspect.signature(get_encoder_class(parse_spec(spec)[0]).create).parameters
        except Exception:  # an unknown kind or a bad spec: check_config reports it
            continue
        if takes:
            kwargs[modality] = {**own, POOL_STAGES: FROZEN_POOL_STAGES}
    model.encoder_kwargs = kwargs


def method_of(cfg: Any) -> str:
    """The method a resolved config runs, in `METHODS` terms ("custom" for mixes such as LiT's frozen list)."""
    model, train = cfg.model, cfg.train
    if train.linear_probe:
        return "probe"
    if model.peft is not None:
        return "lora"
    if model.unlock_last_blocks:
        return "last_blocks"
    if model.freeze_encoders is True and model.unfreeze_after_epochs is None:
        return "head"
    if model.freeze_encoders is False:
        return "full"
    return "custom"
