"""Which table column feeds each modality of a config: ``data.<modality>_column`` for the built-in three,
``data.columns`` for any other (defaulting to the modality's own name)."""

from __future__ import annotations

from multimodal.config.schema import ConfigError, ExperimentConfig

BUILTIN_COLUMNS = ("text", "image", "audio")


def modality_columns(cfg: ExperimentConfig, modalities: list[str]) -> dict[str, str]:
    """modality -> table column: ``data.<modality>_column`` for text/image/audio, ``data.columns`` for others."""
    columns = {}
    for m in modalities:
        column = cfg.data.columns.get(m) if m in cfg.data.columns else (
            getattr(cfg.data, f"{m}_column") if m in BUILTIN_COLUMNS else m)
        if column is None:
            raise ConfigError(f"the model has a {m} encoder but data.{m}_column is null")
        columns[m] = column
    return columns
