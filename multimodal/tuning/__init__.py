"""Hyper-parameter search on Optuna over experiment configs (`multimodal-tune`)."""

from multimodal.tuning.space import Param, read_space
from multimodal.tuning.study import PruningCallback, SearchSettings, tune

__all__ = ["Param", "PruningCallback", "SearchSettings", "read_space", "tune"]
