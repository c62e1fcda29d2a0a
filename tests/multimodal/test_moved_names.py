"""Names that moved keep working from their old modules for one release, with a DeprecationWarning naming the
new home; `multimodal.cache` itself (now a package) still serves the old module's names without one."""

from __future__ import annotations

import importlib
import warnings

import pytest

import multimodal.cache
from multimodal.cache import datasets, files, keys, store
from multimodal.config import checks, schema
from multimodal.data import partition, splits

MOVED = [
    ("multimodal.config.validation", "check_ranges", checks.check_ranges),
    ("multimodal.config.validation", "numeric_fields", checks.numeric_fields),
    ("multimodal.config.validation", "check_paths", checks.check_paths),
    ("multimodal.config.validation", "Range", schema.Range),
    ("multimodal.config.validation", "short", schema.short),
    ("multimodal.config.experiments", "ADVERSARIAL_TARGETS", schema.ADVERSARIAL_TARGETS),
    ("multimodal.config.experiments", "check_experiment_options", checks.check_experiment_options),
    ("multimodal.config.finetune_checks", "check_finetune", checks.check_finetune),
    ("multimodal.config.finetune_checks", "MIXABLE", checks.MIXABLE),
    ("multimodal.cache_files", "ORPHAN_AGE_S", files.ORPHAN_AGE_S),
    ("multimodal.cache_files", "scan", files.scan),
    ("multimodal.data.cached", "cache_datasets", datasets.cache_datasets),
    ("multimodal.data.cached", "CachedFeatureCollator", datasets.CachedFeatureCollator),
    ("multimodal.data.subsets", "take_shots", splits.take_shots),
    ("multimodal.data.subsets", "fold_units", splits.fold_units),
    ("multimodal.data.subsets", "assign_folds", partition.assign_folds),
]


@pytest.mark.parametrize("old,name,new", MOVED, ids=[f"{o}.{n}" for o, n, _ in MOVED])
def test_old_paths_still_work_and_warn(old, name, new):
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} is deprecated .* use "):
        assert getattr(module, name) is new
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        module.nope  # noqa: B018


def test_the_old_ranges_table_is_read_from_the_schema():
    module = importlib.import_module("multimodal.config.validation")
    with pytest.warns(DeprecationWarning, match="field metadata"):
        ranges = module.RANGES
    assert ranges["train.max_grad_norm"].describe() == "> 0 (null turns clipping off)"
    assert set(ranges) == {key for key, _, _ in checks.numeric_fields(schema.ExperimentConfig)}


def test_multimodal_cache_serves_the_old_module_names_without_warning():
    old_names = ["ABSENT", "UNREADABLE", "FeatureCache", "content_key", "encoder_fingerprint", "encoder_key_parts",
                 "file_hash", "weights_hash"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = {name: getattr(multimodal.cache, name) for name in old_names}
    assert found["FeatureCache"] is store.FeatureCache and found["content_key"] is keys.content_key
