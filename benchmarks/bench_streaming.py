"""Training-loader throughput: WebDataset tar shards (multimodal-write-shards) vs the CSV manifest of files.

Both loaders read the same training rows of the text-image demo (PNG digits + captions) and run the same
collate function: the recipe's encoders' train-mode preprocessing (MiniLM tokenizer, EfficientNet-Lite0
transforms). Whole epochs alternate between the two for --repeats rounds; samples/s and the ratio are printed.

    PYTHONPATH=. python benchmarks/bench_streaming.py [--workers 2] [--repeats 3] [--samples-per-shard 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import alternate, machine_info, print_table, summarise, timed, write_json  # noqa: E402, I001


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--samples-per-shard", type=int, default=64)
    parser.add_argument("--demo-size", type=int, default=600)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from multimodal import get_task, load_config
    from multimodal.data.loading import Collator, make_dataloader
    from multimodal.data.shards import write_shards
    from multimodal.data.streaming import stream_loader, streaming_splits
    from multimodal.regimes.federated import write_rows

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(os.path.join(root, "recipes", "configs", "text_image_classification.yaml"),
                          [f"data.demo_size={args.demo_size}", f"train.batch_size={args.batch_size}"])
        task = get_task(cfg.model.task)(cfg)
        splits = task.build_splits(progress=False)
        model = task.build_model(splits)
        collate = Collator(model.get_preprocessors(train=True), task.label_type)
        manifest = write_rows(splits.train, list(range(len(splits.train))), os.path.join(tmp, "train.csv"))
        index = write_shards(manifest, os.path.join(tmp, "shards"), {"text": "text", "image": "image"},
                             samples_per_shard=args.samples_per_shard)
        last = len(index["shards"]) - 1
        stream_cfg = load_config(None, [f"data.webdataset={tmp}/shards/shard-{{000000..{last:06d}}}.tar",
                                        f"train.batch_size={args.batch_size}", "data.audio_column=null"])
        stream = streaming_splits(stream_cfg, {"text": "text", "image": "image"}, "label", "single_label").train
        loaders = {
            "manifest": make_dataloader(splits.train, collate, args.batch_size, shuffle=True, num_workers=args.workers),
            "shards": stream_loader(stream, collate, args.workers),
        }
        counts = {"manifest": len(splits.train), "shards": len(stream)}
        epoch = {"n": 0}

        def run(name: str):
            def go() -> float:
                epoch["n"] += 1
                loader = loaders[name]
                loader.dataset.set_epoch(epoch["n"]) if name == "shards" else loader.sampler.set_epoch(epoch["n"])
                return timed(lambda: [None for _ in loader])

            return go

        run("manifest")()  # warm the page cache for both
        run("shards")()
        times = alternate({n: run(n) for n in loaders}, args.repeats)
    summary = summarise(times, "manifest")
    rows = [{"loader": n, "samples": counts[n], "workers": args.workers, "epoch_s": summary[n]["median_s"],
             "samples_per_s": counts[n] / summary[n]["median_s"],
             "speed_vs_manifest": (counts[n] / summary[n]["median_s"]) / (counts["manifest"] / summary["manifest"]["median_s"])}
            for n in loaders]
    print(f"machine: {machine_info()}; {len(index['shards'])} shards of {args.samples_per_shard}")
    print_table("Training loader: shards vs manifest of files (same collate)", rows, list(rows[0]))
    write_json(args.json, {"rows": rows, "args": vars(args)})


if __name__ == "__main__":
    main()
