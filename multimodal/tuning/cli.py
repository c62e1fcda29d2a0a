"""``multimodal-tune``: hyper-parameter search over an experiment config with Optuna::

    multimodal-tune --config my.yaml --space space.yaml --trials 20 [--storage sqlite:///study.db]
        [--study-name NAME] [--timeout SECONDS] [--output DIR] [--pruner median|hyperband|successive_halving|none]
        [--startup-trials 5] [--seed 0] [--keep-models] [key=value ...]

See `multimodal.tuning.study` for what a trial is and what is written.
"""

from __future__ import annotations

import argparse
import os
from typing import Optional

from encoders import EncoderError
from multimodal.config.loading import config_from_dict, parse_overrides, read_config_file
from multimodal.config.merge import deep_merge
from multimodal.config.schema import ConfigError
from multimodal.data.dataset import DataError
from multimodal.tuning.space import read_space
from multimodal.tuning.study import PRUNERS, SearchSettings, tune


def main(argv: Optional[list[str]] = None) -> int:
    """CLI entry point; user errors exit with a one-line message, no traceback."""
    parser = argparse.ArgumentParser(prog="multimodal-tune", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default=None, help="base experiment config (YAML); none: the schema defaults")
    parser.add_argument("--space", required=True, help="search space YAML: dotted config key -> distribution")
    parser.add_argument("--trials", type=int, required=True, help="total trials in the study (resuming counts earlier ones)")
    parser.add_argument("--storage", default=None, help="Optuna RDB URL; none: sqlite:///<output>/study.db")
    parser.add_argument("--study-name", default=None, help="none: the config file's name")
    parser.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    parser.add_argument("--output", default=None, help="none: <train.output_dir>/tune")
    parser.add_argument("--pruner", default="median", choices=PRUNERS, help="Optuna pruner that stops hopeless trials")
    parser.add_argument("--startup-trials", type=int, default=5,
                        help="random trials before TPE models the space, and trials before the median pruner prunes")
    parser.add_argument("--seed", type=int, default=0, help="TPE seed (give each worker of a shared study its own)")
    parser.add_argument("--keep-models", action="store_true", help="keep every trial's model/ folder")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the base config, e.g. train.epochs=10")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.trials < 1:
            raise ConfigError(f"--trials must be >= 1, got {args.trials}")
        base = read_config_file(args.config) if args.config else {}
        base = deep_merge(base, parse_overrides(list(args.overrides)))
        cfg = config_from_dict(base)  # the base config itself must be valid
        space = read_space(args.space, base)
        output = args.output or os.path.join(cfg.train.output_dir, "tune")
        settings = SearchSettings(output, args.trials, args.storage, args.study_name, args.timeout, args.pruner,
                                  args.startup_trials, args.seed, args.keep_models)
        summary = tune(base, space, settings, args.config)
    except (ConfigError, DataError, EncoderError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    best = summary.get("best_trial")
    print(f"trials: {summary['trials']}")
    if best:
        print(f"best trial {best['number']}: {summary['metric']}={best['value']:.4f} {best['params']}")
        print(f"best config: {os.path.join(output, 'best_config.yaml')}")
    else:
        print("no trial completed: see trials.csv for the errors")
    print(f"outputs in {os.path.abspath(output)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
