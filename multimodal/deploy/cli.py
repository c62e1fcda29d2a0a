"""Command lines: ``multimodal-predict``, ``multimodal-export``, ``multimodal-quantize`` and ``multimodal-prune``.

A user error (a missing folder, a bad row, an unsupported option) ends the command with ``error: <message>``
and exit status 1, never a traceback. ``multimodal-serve`` lives in `multimodal.deploy.server`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from typing import Any, Optional

from multimodal.config.loading import load_config
from multimodal.data.limits import add_limit_options, limits_from_args
from multimodal.data.manifest import read_manifest
from multimodal.deploy.errors import DeployError
from multimodal.deploy.export import export_folder
from multimodal.deploy.loading import load_source_model
from multimodal.deploy.predictor import Predictor
from multimodal.deploy.prune import prune_model, recover, save_pruned
from multimodal.deploy.quantize import quantize_exported
from multimodal.deploy.runtime import FORMATS, is_exported
from multimodal.errors import user_errors as report_user_errors
from multimodal.progress import progress_bar


def user_errors() -> contextlib.AbstractContextManager[None]:
    """The framework's user-error reporting (`multimodal.errors`: ``error: <message>``, exit status 1, no
    traceback unless MULTIMODAL_DEBUG=1), with the deploy errors and missing files counted as the user's."""
    return report_user_errors(extra=(DeployError, FileNotFoundError))


def _columns(args: argparse.Namespace, modalities: list[str], header: list[str]) -> dict[str, str]:
    """modality -> manifest column; '' drops a modality; a column missing from the manifest is an error."""
    out = {}
    for m in modalities:
        column = getattr(args, f"{m}_column", None) if m in ("text", "image", "audio") else m
        column = m if column is None else column
        if column == "":
            continue
        if column not in header:
            raise DeployError(f"{args.data}: column {column!r} (for the {m} modality) not found; columns are {header}. "
                              f"Pass --{m}-column NAME, or --{m}-column '' to predict without {m}")
        out[m] = column
    if not out:
        raise DeployError(f"{args.data}: no column for any of the model's modalities {modalities}")
    return out


# ---------------------------------------------------------------------------------------------- predict
def predict_main(argv: Optional[list[str]] = None) -> int:
    """multimodal-predict: predictions for every row of a manifest, as JSON lines in input order."""
    parser = argparse.ArgumentParser(prog="multimodal-predict", description=predict_main.__doc__)
    parser.add_argument("--model", required=True, help="a PyTorch model folder (save_pretrained) or an exported one")
    parser.add_argument("--data", required=True, help="manifest (CSV/TSV/JSONL/Parquet); paths relative to it")
    parser.add_argument("--output", required=True, help="JSON-lines file: one object per row, in input order")
    parser.add_argument("--batch-size", type=int, default=32)
    for m in ("text", "image", "audio"):
        parser.add_argument(f"--{m}-column", default=None, help=f"column of the {m} modality (default: {m}; '' = none)")
    parser.add_argument("--on-bad-row", choices=("error", "skip"), default="error",
                        help="error: stop at the first bad row, naming it; skip: write {row, error} for it and count it")
    parser.add_argument("--num-threads", type=int, default=None, help="CPU threads for the model")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow code from the model folder to run")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_limit_options(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with user_errors():
        predictor = Predictor.from_pretrained(args.model, batch_size=args.batch_size, num_threads=args.num_threads,
                                              trust_remote_code=args.trust_remote_code, limits=limits_from_args(args, parser))
        try:
            table = read_manifest(args.data)
        except ValueError as err:
            raise DeployError(str(err)) from None
        if not table:
            raise DeployError(f"{args.data}: no rows")
        columns = _columns(args, predictor.modalities, list(table[0].keys()))
        rows = [{m: row.get(c) for m, c in columns.items()} for row in table]
        counts = _write_predictions(predictor, rows, args)
    bad = counts["bad"]
    print(f"predicted {counts['ok']} of {len(rows)} rows from {args.data}" +
          (f"; {bad} bad row(s) skipped and written as {{row, error}}" if bad else "") + f" -> {args.output}",
          file=sys.stderr)
    for message in counts["examples"]:
        print(f"  skipped: {message}", file=sys.stderr)
    return 0


def _write_predictions(predictor: Any, rows: list[dict], args: argparse.Namespace) -> dict[str, Any]:
    """Stream predictions into a temporary file next to --output, renamed when complete."""
    lower = args.data.lower()
    first_line = 2 if lower.endswith((".csv", ".tsv")) else None
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".predict-", suffix=".jsonl", dir=out_dir)
    counts: dict[str, Any] = {"ok": 0, "bad": 0, "examples": []}
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f, \
                progress_bar(total=len(rows), desc="predict", unit="row", disable=args.no_progress) as bar:
            results = predictor.predict_iter(rows, base_dir=os.path.dirname(os.path.abspath(args.data)),
                                             source=args.data, on_bad_row=args.on_bad_row, first_line=first_line)
            for i, pred, error in results:
                record = {"row": i + 1, **pred} if error is None else {"row": i + 1, "error": error}
                f.write(json.dumps(record) + "\n")
                counts["ok" if error is None else "bad"] += 1
                if error is not None and len(counts["examples"]) < 5:
                    counts["examples"].append(error)
                bar.update(1)
        os.replace(tmp, args.output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return counts


# ---------------------------------------------------------------------------------------------- export
def export_main(argv: Optional[list[str]] = None) -> int:
    """multimodal-export: a model folder -> graphs + deploy.json + preprocessing files (optionally int8)."""
    parser = argparse.ArgumentParser(prog="multimodal-export", description=export_main.__doc__)
    parser.add_argument("--model", required=True, help="PyTorch model folder (save_pretrained)")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--output", required=True, help="folder to write (replaced if it is an exported folder)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset")
    parser.add_argument("--quantize", choices=("int8",), default=None,
                        help="int8: dynamic int8 quantization (ONNX Runtime) of the exported graphs")
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow code from the model folder to run")
    args = parser.parse_args(argv)
    with user_errors():
        if args.quantize and args.format != "onnx":
            raise DeployError("--quantize int8 applies to --format onnx")
        target = args.output
        if os.path.exists(target) and not is_exported(target):
            raise DeployError(f"{target} exists and is not an exported folder; choose a new --output")
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".fp32-", dir=os.path.dirname(os.path.abspath(target)) or ".") as tmp:
            fp32_dir = os.path.join(tmp, "fp32") if args.quantize else target
            manifest = export_folder(args.model, fp32_dir, args.format, opset=args.opset, verify=not args.no_verify,
                                     trust_remote_code=args.trust_remote_code)
            if args.quantize:
                manifest = quantize_exported(fp32_dir, target)
    check = manifest.get("verification") or {}
    note = (f"; exported vs PyTorch max |diff| {check['end_to_end_max_abs_diff']:.2e} (end to end)"
            if "end_to_end_max_abs_diff" in check else "")
    quant = manifest.get("quantization")
    if quant:
        note += f"; int8 graphs {quant['bytes']['quantized'] / max(quant['bytes']['fp32'], 1):.2f}x the fp32 size"
    print(f"exported {', '.join(manifest['graphs'])} ({manifest['format']}) to {target}{note}")
    return 0


# ---------------------------------------------------------------------------------------------- quantize
def quantize_main(argv: Optional[list[str]] = None) -> int:
    """multimodal-quantize: dynamic int8 quantization of an exported ONNX folder into a new folder."""
    parser = argparse.ArgumentParser(prog="multimodal-quantize", description=quantize_main.__doc__)
    parser.add_argument("--model", required=True, help="exported ONNX folder (multimodal-export)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--per-channel", action="store_true", help="one scale per output channel")
    parser.add_argument("--ops", nargs="+", default=None, help="ONNX op types to quantize (default: see README)")
    args = parser.parse_args(argv)
    with user_errors():
        manifest = quantize_exported(args.model, args.output, per_channel=args.per_channel, op_types=args.ops)
    sizes = manifest["quantization"]["bytes"]
    print(f"int8 model in {args.output}: {sizes['quantized'] / 2**20:.1f} MiB ({sizes['quantized'] / sizes['fp32']:.2f}x "
          f"of {sizes['fp32'] / 2**20:.1f} MiB fp32)")
    return 0


# ---------------------------------------------------------------------------------------------- prune
def prune_main(argv: Optional[list[str]] = None) -> int:
    """multimodal-prune: prune a model folder (magnitude, channels or attention heads), optionally fine-tune it
    briefly to recover, and save it as a model folder."""
    parser = argparse.ArgumentParser(prog="multimodal-prune", description=prune_main.__doc__)
    parser.add_argument("--model", required=True, help="PyTorch model folder (save_pretrained)")
    parser.add_argument("--output", required=True, help="folder for the pruned model")
    parser.add_argument("--method", choices=("magnitude", "channels", "heads"), default="magnitude")
    parser.add_argument("--amount", type=float, required=True, help="fraction to prune, in [0, 1)")
    parser.add_argument("--scope", choices=("all", "encoders", "head"), default="all",
                        help="which part's weights are pruned (head = fusion + task head)")
    parser.add_argument("--recover-config", default=None,
                        help="YAML config (e.g. the training run's config.yaml) whose data and train settings drive a "
                             "short recovery fine-tune that keeps the pruned weights at zero")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of --recover-config, e.g. train.epochs=2")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow code from the model folder to run")
    args = parser.parse_args(argv)
    with user_errors():
        model, labels, _ = load_source_model(args.model, trust_remote_code=args.trust_remote_code)
        report = prune_model(model, args.amount, method=args.method, scope=args.scope)
        if args.recover_config:
            cfg = load_config(args.recover_config, args.overrides)
            report["recovery"] = recover(model, cfg, labels=labels)
        elif args.overrides:
            raise DeployError("key=value overrides need --recover-config")
        save_pruned(model, args.output, labels, report)
    print(f"pruned ({args.method}, {args.scope}) to {report['sparsity']:.1%} zeros in the pruned tensors "
          f"({report['model_sparsity']:.1%} of all weights) -> {args.output}")
    return 0


if __name__ == "__main__":  # pragma: no cover - python -m multimodal.deploy.cli <command> ...
    commands = {"predict": predict_main, "export": export_main, "quantize": quantize_main, "prune": prune_main}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        raise SystemExit(f"usage: python -m multimodal.deploy.cli {{{','.join(commands)}}} ...")
    raise SystemExit(commands[sys.argv[1]](sys.argv[2:]))
