"""Config checks for the experiment options: few-shot sampling, cross-validation folds, adversarial training.

Called by `check_config` when a config is loaded, so a bad value stops the run before any data is read, with a
`ConfigError` naming the key.
"""

from __future__ import annotations

from multimodal.config.schema import ConfigError, ExperimentConfig

ADVERSARIAL_TARGETS = {"image": "image", "audio": "audio", "text_embeddings": "text"}
"""Entries of ``train.adversarial.on`` and the modality each perturbs."""


def _check_shots(cfg: ExperimentConfig) -> None:
    k = cfg.data.shots_per_class
    if k is None:
        return
    if k < 1:
        raise ConfigError(f"data.shots_per_class must be a positive number of rows per class, got {k}")
    if not cfg.data.label_column:
        raise ConfigError("data.shots_per_class samples rows per class: set data.label_column")


def _check_folds(cfg: ExperimentConfig) -> None:
    data = cfg.data
    folds, column = data.folds, data.fold_column
    if folds is None and column is None:
        return
    if folds is not None and column is not None:
        raise ConfigError(f"give data.folds ({folds!r}) or data.fold_column ({column!r}), not both")
    if isinstance(folds, str) and folds != "groups":
        raise ConfigError(f"data.folds: expected a number of folds (>= 2) or 'groups', got {folds!r}")
    if isinstance(folds, int) and folds < 2:
        raise ConfigError(f"data.folds: cross-validation needs at least 2 folds, got {folds}")
    if folds == "groups" and not data.group_column:
        raise ConfigError("data.folds=groups leaves out one value of data.group_column per fold: set data.group_column "
                          "(e.g. the speaker column)")
    for key in ("validation", "test"):
        if getattr(data, key):
            raise ConfigError(f"cross-validation pools one table into folds; data.{key} ({getattr(data, key)!r}) names a "
                              "separate manifest: put every row in data.train")
    if data.split_column:
        raise ConfigError(f"cross-validation makes its own splits; data.split_column ({data.split_column!r}) would be "
                          "ignored: set it to null")


def _check_adversarial(cfg: ExperimentConfig) -> None:
    adv = cfg.train.adversarial
    if adv is None:
        return
    if cfg.train.distill is not None:
        raise ConfigError("train.adversarial and train.distill cannot be combined: the adversarial step replaces the "
                          "training loss that distillation would also replace; set one of them to null")
    if cfg.train.linear_probe:
        raise ConfigError("train.adversarial needs a trained head: train.linear_probe fits a logistic regression on "
                          "fixed features, with no training step to attack")
    if not adv.on:
        raise ConfigError("train.adversarial.on is empty: list what to perturb (image, audio, text_embeddings)")
    for i, target in enumerate(adv.on):
        if target not in ADVERSARIAL_TARGETS:
            raise ConfigError(f"train.adversarial.on[{i}]: unknown target {target!r}; choose from "
                              f"{sorted(ADVERSARIAL_TARGETS)}")
        if ADVERSARIAL_TARGETS[target] not in cfg.model.encoders:
            raise ConfigError(f"train.adversarial.on[{i}]: {target!r} perturbs the {ADVERSARIAL_TARGETS[target]} "
                              f"modality, which is not in model.encoders ({sorted(cfg.model.encoders)})")
    radii = adv.epsilon if isinstance(adv.epsilon, dict) else {t: adv.epsilon for t in adv.on}
    for target, eps in radii.items():
        key = f"train.adversarial.epsilon.{target}" if isinstance(adv.epsilon, dict) else "train.adversarial.epsilon"
        if target not in adv.on:
            raise ConfigError(f"{key}: {target!r} is not in train.adversarial.on ({adv.on})")
        if not eps > 0:
            raise ConfigError(f"{key} must be > 0, got {eps}")
    missing = [t for t in adv.on if t not in radii]
    if missing:
        raise ConfigError(f"train.adversarial.epsilon gives no radius for {missing}")
    if adv.steps < 1:
        raise ConfigError(f"train.adversarial.steps must be >= 1, got {adv.steps}")
    if adv.step_size is not None and not adv.step_size > 0:
        raise ConfigError(f"train.adversarial.step_size must be > 0, got {adv.step_size}")


def check_experiment_options(cfg: ExperimentConfig) -> None:
    """Raise `ConfigError` for bad few-shot, cross-validation or adversarial-training settings."""
    _check_shots(cfg)
    _check_folds(cfg)
    _check_adversarial(cfg)
