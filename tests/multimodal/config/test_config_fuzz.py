"""Seeded fuzzing of config loading: override lists and YAML documents, valid and hostile; `load_config` may only
ever succeed or raise `ConfigError` (a message naming the key or file), never any other exception."""

from __future__ import annotations

import random
import time
import traceback

import pytest
from fuzzcases import override_case, yaml_case

from multimodal.config import ConfigError, load_config, load_config_text

SEED = 20240610
N_OVERRIDE_CASES = 7000
N_YAML_CASES = 4000
TIME_LIMIT_S = 30.0


@pytest.mark.slow
def test_fuzzed_configs_raise_only_config_errors(tmp_path):
    rng = random.Random(SEED)
    escaped: list[str] = []
    outcomes = {"accepted": 0, "ConfigError": 0}
    start, cpu_start = time.perf_counter(), time.process_time()

    def attempt(what: str, load, *args) -> None:
        try:
            load(*args)
            outcomes["accepted"] += 1
        except ConfigError as err:
            assert str(err), what
            outcomes["ConfigError"] += 1
        except BaseException as err:  # noqa: BLE001 - exactly what the test looks for
            escaped.append(f"{what}: {type(err).__name__}: {str(err)[:200]}\n{traceback.format_exc()[-600:]}")

    for _ in range(N_OVERRIDE_CASES):
        overrides = override_case(rng)
        attempt(f"overrides {[o[:80] for o in overrides]}", load_config, None, overrides)
    for i in range(N_YAML_CASES):
        data = yaml_case(rng)
        overrides = override_case(rng) if rng.random() < 0.2 else None
        if i % 20 == 0:  # some through real files (writing every case would time the disk, not the loader)
            path = tmp_path / f"case{i}.yaml"
            path.write_bytes(data)
            attempt(f"yaml file {data[:120]!r}", load_config, str(path), overrides)
        else:
            attempt(f"yaml {data[:120]!r}", load_config_text, data, overrides)
    attempt("a folder as --config", load_config, str(tmp_path))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    total = sum(outcomes.values()) + len(escaped)
    assert total >= 10_000
    assert not escaped, f"{len(escaped)} of {total} cases escaped as other exceptions:\n" + "\n".join(escaped[:5])
    # the generator reaches both outcomes in quantity, so the cases exercise the checks rather than one error path
    assert outcomes["accepted"] > 1000 and outcomes["ConfigError"] > 5000, outcomes
    # CPU time of this process: what the cases cost, not how busy the (shared) machine was
    assert cpu < TIME_LIMIT_S, f"{total} cases took {cpu:.1f}s of CPU ({elapsed:.1f}s wall)"
    print(f"{total} fuzzed configs in {cpu:.1f}s CPU, {elapsed:.1f}s wall: {outcomes}")
