"""The experiment config: dataclass schema with each number's range, YAML + ``key=value`` loading in layers, checks."""

from multimodal.config.checks import check_config
from multimodal.config.loading import (
    config_from_dict,
    config_to_dict,
    load_config,
    load_config_text,
    parse_cli,
    parse_config_text,
    parse_overrides,
    parse_value,
    read_config_file,
    save_config,
)
from multimodal.config.schema import (
    AdversarialConfig,
    ConfigError,
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    ModelConfig,
    Range,
    RetrievalConfig,
    TrainConfig,
    ranged,
)

__all__ = [
    "AdversarialConfig",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "ModelConfig",
    "Range",
    "RetrievalConfig",
    "TrainConfig",
    "check_config",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "load_config_text",
    "parse_cli",
    "parse_config_text",
    "parse_overrides",
    "parse_value",
    "ranged",
    "read_config_file",
    "save_config",
]
