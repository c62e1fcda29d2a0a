"""Launched by the multi-node test on each "machine": trains with the Trainer, writes what this rank saw."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

import torch

from multimodal import Trainer, get_task, load_config
from multimodal.tasks import build_loaders
from multimodal.training.accelerator import finish_processes, process_state


def main(argv: list[str]) -> None:
    """``_rank_report.py --config FILE``: train, evaluate, write ``<output_dir>/rank<N>.json``."""
    cfg = load_config(argv[1], argv[2:])
    state = process_state(cfg.train.dist_timeout_s)
    if os.environ.get("HANG_RANK") == str(state.process_index):
        time.sleep(600)  # a rank that never reaches the first collective (the test kills it)
    task = get_task(cfg.model.task)(cfg)
    splits = task.build_splits(progress=False)
    model = task.build_model(splits)
    loaders = build_loaders(task, model, splits, accelerator=state, progress=False)
    trainer = Trainer(model, cfg.train, loaders["train"], loaders["validation"],
                      compute_metrics_fn=lambda p: task.evaluate(p, splits.validation, model, full=False).metrics,
                      metric_for_best=task.default_metric(), eval_batch_loss=task.batch_loss)
    trainer.train()
    digest = hashlib.sha256()
    for name, tensor in sorted(trainer.unwrapped_model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    report = {"rank": state.process_index, "world": state.num_processes, "weights": digest.hexdigest(),
              "train_batches": len(trainer.train_loader), "history": trainer.state.history,
              "validation_rows": len(splits.validation), "threads": torch.get_num_threads()}
    with open(os.path.join(cfg.train.output_dir, f"rank{state.process_index}.json"), "w") as f:
        json.dump(report, f)
    trainer.end()
    finish_processes()


if __name__ == "__main__":
    main(sys.argv)
