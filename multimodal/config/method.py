"""``train.method``: one key for the fine-tuning method, mapped onto the switches that existed before it.

=============  =====================================================================================
method         switches it sets
=============  =====================================================================================
probe          ``train.linear_probe=true``, ``model.freeze_encoders=true``
head           ``model.freeze_encoders=true`` (fusion + head trained, features from the cache)
lora           ``model.peft`` (rank 8 unless given), encoders' base weights frozen
last_blocks    ``model.unlock_last_blocks`` (the last 2 blocks of every encoder unless given)
full           ``model.freeze_encoders=false`` (every encoder trains)
auto           none here: the runner fits the probe, then the trained candidates that the data size and
               ``train.time_budget_s`` allow, and keeps the best on validation (`multimodal.training.auto`)
null           none: the switches decide, as in configs written before this key
=============  =====================================================================================

An explicit method overrides the switches it names. ``auto`` applies only when no switch chose a method
(`switches_chosen`); otherwise the run follows the switches, as before.
"""

from __future__ import annotations

from typing import Any

from multimodal.config.schema import ConfigError, PeftConfig

METHODS = ("probe", "head", "lora", "last_blocks", "full")
"""The methods ``train.method`` names (besides auto), cheapest first: method auto's candidates, in order."""
LAST_BLOCKS = 2  # blocks unlocked per encoder by method last_blocks when model.unlock_last_blocks is empty


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
    return cfg


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
