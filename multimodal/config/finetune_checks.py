"""Config checks for the fine-tuning methods (probe, LoRA, unlocking, layer decay, EMA, WiSE-FT, augmentation)."""

from __future__ import annotations

from multimodal.config.schema import ConfigError, ExperimentConfig

MIXABLE = ("image", "audio", "audio-mel")


def _kind(spec: str) -> str:
    return str(spec).split(":", 1)[0]


def check_finetune(cfg: ExperimentConfig) -> None:
    """Raise `ConfigError` naming the key for settings the fine-tuning methods cannot run with."""
    model, train, aug = cfg.model, cfg.train, cfg.data.augment
    encoders = model.encoders
    for m, n in model.unlock_last_blocks.items():
        if m not in encoders:
            raise ConfigError(f"model.unlock_last_blocks names {m!r}, which is not in model.encoders ({sorted(encoders)})")
        if n < 0:
            raise ConfigError(f"model.unlock_last_blocks.{m} must be >= 0, got {n}")
    if model.peft is not None:
        p = model.peft
        unknown = sorted(set(p.modalities or []) - set(encoders))
        if unknown:
            raise ConfigError(f"model.peft.modalities names {unknown}, which are not in model.encoders ({sorted(encoders)})")
        if isinstance(p.target_modules, dict):
            extra = sorted(set(p.target_modules) - set(encoders))
            if extra:
                raise ConfigError(f"model.peft.target_modules names {extra}, which are not in model.encoders")
        if p.r < 1:
            raise ConfigError(f"model.peft.r must be >= 1, got {p.r}")
        if not 0.0 <= p.dropout < 1.0:
            raise ConfigError(f"model.peft.dropout must be in [0, 1), got {p.dropout}")
        if model.unfreeze_after_epochs is not None:
            raise ConfigError("model.peft and model.unfreeze_after_epochs cannot be combined: LoRA keeps the base frozen")
        both = sorted(set(p.modalities or encoders) & set(model.unlock_last_blocks))
        if both:
            raise ConfigError(f"model.peft and model.unlock_last_blocks both name {both}: choose one per encoder")
    if train.linear_probe:
        if model.task not in ("single_label", "multi_label"):
            raise ConfigError(f"train.linear_probe fits classifiers; model.task={model.task!r} is not supported")
        for key, value in (("model.peft", model.peft), ("model.unlock_last_blocks", model.unlock_last_blocks),
                           ("train.wise_ft_alphas", train.wise_ft_alphas), ("train.ema_decay", train.ema_decay)):
            if value:
                raise ConfigError(f"train.linear_probe keeps the encoders frozen and trains nothing: unset {key}")
    if train.probe_init:
        if train.linear_probe:
            raise ConfigError("train.probe_init fine-tunes from a fitted probe, train.linear_probe stops at the probe: "
                              "set one of them")
        if model.task not in ("single_label", "multi_label"):
            raise ConfigError(f"train.probe_init starts a classifier from a linear probe; model.task={model.task!r} "
                              "is not supported")
        if model.fusion != "concat" or model.head_hidden_dim is not None:
            raise ConfigError("train.probe_init replaces the fusion and head with the probe's standardised "
                              "concatenation and linear head: leave model.fusion=concat and model.head_hidden_dim=null")
    if train.probe_cs is not None and (not train.probe_cs or any(c <= 0 for c in train.probe_cs)):
        raise ConfigError(f"train.probe_cs must be a non-empty list of positive numbers, got {train.probe_cs}")
    if train.refit_full and not train.linear_probe:
        raise ConfigError("train.refit_full applies to the linear probe (train.linear_probe=true)")
    if train.layer_decay is not None and not 0.0 < train.layer_decay <= 1.0:
        raise ConfigError(f"train.layer_decay must be in (0, 1], got {train.layer_decay}")
    if train.ema_decay is not None and not 0.0 < train.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must be in (0, 1), got {train.ema_decay}")
    if train.wise_ft_alphas is not None:
        if not train.wise_ft_alphas or any(not 0.0 <= a <= 1.0 for a in train.wise_ft_alphas):
            raise ConfigError(f"train.wise_ft_alphas must be a non-empty list in [0, 1], got {train.wise_ft_alphas}")
    if aug.mixup_alpha < 0 or aug.cutmix_alpha < 0 or not 0.0 <= aug.mix_prob <= 1.0:
        raise ConfigError("data.augment: mixup_alpha and cutmix_alpha must be >= 0 and mix_prob in [0, 1]")
    if aug.mixup_alpha > 0 or aug.cutmix_alpha > 0:
        if model.task not in ("single_label", "multi_label"):
            raise ConfigError(f"data.augment.mixup_alpha / cutmix_alpha mix class labels; model.task={model.task!r}")
        for m, spec in encoders.items():
            if _kind(spec) not in MIXABLE:
                raise ConfigError(f"data.augment.mixup_alpha / cutmix_alpha: the {m} encoder ({spec}) cannot be mixed; "
                                  "only image and audio inputs can")
            if aug.cutmix_alpha > 0 and _kind(spec) != "image":
                raise ConfigError(f"data.augment.cutmix_alpha: cutmix cuts images; the {m} encoder is {spec}")
    if aug.spec_freq_masks or aug.spec_time_masks:
        bad = [m for m, spec in encoders.items() if m == "audio" and _kind(spec) != "audio-mel"]
        if bad:
            raise ConfigError("data.augment.spec_freq_masks / spec_time_masks need an audio-mel encoder; Hugging Face "
                              "audio models mask in their own config (e.g. wav2vec2 mask_time_prob)")
    if aug.image_auto_augment and not (aug.image_auto_augment in ("randaugment", "trivialaugment")
                                       or aug.image_auto_augment.startswith(("rand", "augmix", "original", "v0"))):
        raise ConfigError(f"data.augment.image_auto_augment: {aug.image_auto_augment!r} is not 'randaugment', "
                          "'trivialaugment' or a timm auto-augment string such as 'rand-m9-mstd0.5-inc1'")
