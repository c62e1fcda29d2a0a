"""``multimodal-train``: train from the installed package, with a config, a built-in recipe or just a table::

    multimodal-train --config my.yaml [key=value ...]
    multimodal-train --recipe text_image_classification [key=value ...]   # the built-in demo
    multimodal-train --data train.csv --label label [--test test.csv] [key=value ...]
    multimodal-train --list-recipes

Also ``python -m multimodal.train ...`` and, on several GPUs, ``accelerate launch -m multimodal.train ...``.
With ``--data`` no YAML is needed: each column's role is inferred from its values (`multimodal.data.roles`),
printed, and recorded in the run's config.yaml (and ``inferred_columns.json``); the label's values pick the
task (classification or regression) and the matching recipe's defaults (encoders, feature cache), with
``train.method: auto`` choosing the method. Without ``--test`` a test split is carved from the table
(``data.test_fraction``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any, Optional

from multimodal.config import config_from_dict, parse_overrides, read_config_file
from multimodal.config.merge import deep_merge
from multimodal.config.schema import ConfigError, ExperimentConfig
from multimodal.data.manifest import read_manifest
from multimodal.data.roles import ColumnInference, infer_columns, suggest
from multimodal.errors import DEBUG_HELP, debug_requested, user_errors
from multimodal.files import write_json
from multimodal.tasks import run, summarize
from multimodal.training.accelerator import finish_processes

RECIPE_DIR = Path(__file__).resolve().parent / "recipe_configs"
# The recipe whose defaults a table with these modalities trains with (the first one that covers them).
TABLE_RECIPES = (("image", "text_image_classification"), ("audio", "text_audio_classification"),
                 ("text", "text_image_classification"))

NO_CHOICE = {"model": {"freeze_encoders": False}, "train": {"method": "auto"}}
"""What a table's run without --config or --recipe trains with: `train.method: auto` (the probe first, then the
trained methods that the rows and `train.time_budget_s` allow; the recipe's frozen encoders would pin the head)."""


def list_recipes() -> dict[str, str]:
    """Built-in recipe name -> the first sentence of its leading comment (the YAML configs shipped with the package)."""
    out = {}
    for path in sorted(RECIPE_DIR.glob("*.yaml")):
        lines = path.read_text(encoding="utf-8").splitlines()
        comment = " ".join(line.lstrip("#").strip() for line in lines[:next(
            (i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))])
        out[path.stem] = re.split(r"(?<!i\.e)(?<!e\.g)\.\s+", comment)[0].rstrip(".").strip()
    return out


def recipe_config(name: str) -> str:
    """The path of built-in recipe `name`'s YAML; `ConfigError` with the known names otherwise."""
    path = RECIPE_DIR / f"{name}.yaml"
    if not path.is_file():
        names = list(list_recipes())
        raise ConfigError(f"--recipe {name!r} is not a built-in recipe{suggest(name, names)} "
                          f"(recipes: {', '.join(names)}; --list-recipes describes them)")
    return str(path)


def table_config(base: dict, inference: ColumnInference, train: str, validation: Optional[str],
                 test: Optional[str]) -> dict:
    """`base` (a recipe's config values) set up to train on the manifests with the inferred columns and task."""
    encoders: dict[str, str] = {}
    for modality in inference.modalities:  # each modality's encoder from the recipe that has one for it
        source = base if modality in (base.get("model") or {}).get("encoders", {}) else read_config_file(
            recipe_config(dict(TABLE_RECIPES)[modality]))
        encoders[modality] = source["model"]["encoders"][modality]
    data = {"demo": None, "demo_size": None, "train": os.path.abspath(train),
            "validation": os.path.abspath(validation) if validation else None,
            "test": os.path.abspath(test) if test else None, **inference.data_config()}
    train_cfg: dict[str, Any] = {"output_dir": os.path.join("outputs", Path(train).stem)}
    if inference.task == "regression":
        train_cfg["metric_for_best"] = "auto"  # a classifier's metric does not apply
    values = deep_merge(base, {"data": data, "model": {"task": inference.task}, "train": train_cfg})
    values["model"]["encoders"] = encoders  # replaced, not merged: only the modalities the table has
    return values


def base_for_table(args: argparse.Namespace, inference: ColumnInference) -> dict:
    """The config values a table's run starts from: --config, --recipe, or the recipe for its modalities."""
    if args.config:
        return read_config_file(args.config)
    if args.recipe:
        return read_config_file(recipe_config(args.recipe))
    name = next(r for m, r in TABLE_RECIPES if m in inference.modalities)
    return read_config_file(recipe_config(name))


def build_config(args: argparse.Namespace) -> tuple[ExperimentConfig, Optional[ColumnInference]]:
    """The experiment config the command line describes, and the column inference when --data was given."""
    overrides = parse_overrides(list(args.overrides))
    if args.output:
        overrides = deep_merge(overrides, {"train": {"output_dir": args.output}})
    if args.config and args.recipe:
        raise ConfigError("give --config or --recipe, not both")
    if not args.data:
        if not (args.config or args.recipe):
            raise ConfigError("nothing to train: give --config FILE, --recipe NAME (--list-recipes) or "
                              "--data TABLE --label COLUMN")
        base = read_config_file(args.config or recipe_config(args.recipe))
        return config_from_dict(deep_merge(base, overrides)), None
    if not args.label:
        raise ConfigError("--data needs --label COLUMN (the column to predict)")
    given = {"text": args.text_column, "image": args.image_column, "audio": args.audio_column,
             "group": args.group_column}
    inference = infer_columns(read_manifest(args.data), args.data, args.label, given, args.task)
    values = table_config(base_for_table(args, inference), inference, args.data, args.validation, args.test)
    if not (args.config or args.recipe):  # nothing chose the method: measurement does (train.method auto)
        values = deep_merge(values, NO_CHOICE)
    return config_from_dict(deep_merge(values, overrides)), inference


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help with every default shown and the description's example lines kept as written."""


def parser() -> argparse.ArgumentParser:
    """The command line of ``multimodal-train``."""
    about = "\n\n".join(__doc__.split("\n\n")[:2]).replace("``", "").replace("::", ":")
    p = argparse.ArgumentParser(prog="multimodal-train", description=about, formatter_class=HelpFormatter)
    p.add_argument("--config", default=None, help="experiment config (YAML)")
    p.add_argument("--recipe", default=None, help="a built-in recipe's config (see --list-recipes)")
    p.add_argument("--list-recipes", action="store_true", help="list the built-in recipes and exit")
    p.add_argument("--data", default=None, help="training table (CSV/TSV/JSONL/Parquet): columns inferred")
    p.add_argument("--label", default=None, help="with --data: the column to predict")
    p.add_argument("--validation", default=None, help="with --data: validation table; none: carved from --data")
    p.add_argument("--test", default=None, help="with --data: test table; none: carved from --data")
    p.add_argument("--task", default=None, choices=("single_label", "multi_label", "regression"),
                   help="with --data: the task; none: inferred from the label values")
    for role in ("text", "image", "audio", "group"):
        p.add_argument(f"--{role}-column", default=None,
                       help=f"with --data: the {role} column, or 'none' for no {role}; none given: inferred")
    p.add_argument("--output", default=None, help="output folder (train.output_dir); none: the config's")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.epochs=3 model.fusion=gated")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """CLI entry point: build the config, run it, print the summary; user errors exit with one line."""
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.list_recipes:
        recipes = list_recipes()
        width = max(map(len, recipes))
        print("\n".join(f"{name:<{width}}  {about}" for name, about in recipes.items()))
        return 0
    leader = os.environ.get("RANK", "0") == "0"  # under accelerate launch, one process prints and writes
    with user_errors(args.debug or debug_requested()):
        cfg, inference = build_config(args)
        if inference is not None and leader:
            print("\n".join(inference.lines()), flush=True)
        metrics = run(cfg)
    out = os.path.abspath(cfg.train.output_dir)
    if leader:
        if inference is not None:
            write_json(os.path.join(out, "inferred_columns.json"), inference.to_dict())
        print(summarize(metrics))
        print(f"outputs in {out}")
    finish_processes()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
