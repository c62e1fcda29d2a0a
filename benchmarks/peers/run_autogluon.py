"""Peer (a): AutoGluon's MultiModalPredictor on fused text+image classification.

Run with the ag peer venv (benchmarks/peers/setup.sh), normally by race.py:

    /work/peer-venvs/ag/bin/python benchmarks/peers/run_autogluon.py --train train.csv --validation validation.csv \
        --test test.csv --out OUT --budget-s 900 --text-model /work/peer-venvs/weights/minilm \
        --image-model /work/peer-venvs/weights/tf_efficientnet_lite0

AutoGluon's own default recipe (preset "medium_quality": every weight fine-tuned, its layer-wise learning-rate
decay, validation twice an epoch, averaging of the best checkpoints) with three changes, all needed to run offline
on the same encoders: ``model.names`` = hf_text + timm_image + fusion_mlp, each backbone's ``checkpoint_name`` a
local folder (the packaged MiniLM; the packaged EfficientNet-Lite0 exported by export_weights.py), and no GPU.
The time budget is AutoGluon's own ``time_limit``. Only the text, image and label columns are given to it.
Writes result.json (time to the best validation score from Lightning's checkpoint messages) and predictions.csv.
"""

from __future__ import annotations

import logging
import os
import re

import torch
from peer_common import BestTracker, job_parser, read_split, write_result

_REACHED = re.compile(r"'val_(\w+)' reached ([0-9.]+) \(best ([0-9.]+)\)")


class CheckpointLog(logging.Handler):
    """Turn Lightning's "'val_accuracy' reached X (best Y)" messages into timed validation scores."""

    def __init__(self, tracker: BestTracker):
        super().__init__()
        self.tracker = tracker

    def emit(self, record: logging.LogRecord) -> None:
        match = _REACHED.search(record.getMessage())
        if match:
            self.tracker.update(float(match.group(2)))


def main() -> None:
    """Fit within the time limit on train (validation as AutoGluon's tuning data), predict the test split."""
    parser = job_parser(__doc__.splitlines()[0])
    parser.add_argument("--presets", default=None, help="AutoGluon preset (default: its medium_quality)")
    parser.add_argument("--modalities", choices=["text,image", "image"], default="text,image")
    parser.add_argument("--max-epochs", type=int, default=None, help="optim.max_epochs (default: AutoGluon's 20)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from autogluon.multimodal import MultiModalPredictor

    image_only = args.modalities == "image"
    columns = ["image", "label"] if image_only else ["text", "image", "label"]
    train, val, test = (read_split(p, columns)[columns] for p in (args.train, args.validation, args.test))
    for df in (train, val, test):
        df["label"] = df["label"].astype(str)
    tracker = BestTracker("val_accuracy")
    handler = CheckpointLog(tracker)
    for name in ("", "lightning", "lightning.pytorch", "pytorch_lightning", "autogluon"):
        logging.getLogger(name).addHandler(handler)
    hyperparameters = {
        "model.names": ["timm_image"] if image_only else ["hf_text", "timm_image", "fusion_mlp"],
        "model.timm_image.checkpoint_name": args.image_model,
        "env.num_gpus": 0,
        "env.num_workers": args.threads,
        "env.num_workers_inference": args.threads,
    }
    if args.max_epochs is not None:
        hyperparameters["optim.max_epochs"] = args.max_epochs
    if not image_only:
        hyperparameters["model.hf_text.checkpoint_name"] = args.text_model
    predictor = MultiModalPredictor(label="label", problem_type="multiclass", eval_metric="accuracy",
                                    path=os.path.join(args.out, "ag"), presets=args.presets)
    predictor.fit(train_data=train, tuning_data=val, time_limit=args.budget_s, hyperparameters=hyperparameters,
                  column_types={"image": "image_path"} if image_only else {"text": "text", "image": "image_path"},
                  seed=args.seed)
    pred = predictor.predict(test[columns[:-1]])
    test.assign(prediction=list(pred.astype(str)))[["label", "prediction"]].to_csv(
        os.path.join(args.out, "predictions.csv"), index=False)
    write_result(args.out, "autogluon.multimodal", tracker, [
        "MultiModalPredictor: " + ("timm_image (packaged EfficientNet-Lite0)" if image_only else
                                   "hf_text (packaged MiniLM) + timm_image (packaged EfficientNet-Lite0) + fusion_mlp"),
        "AutoGluon defaults otherwise: all weights fine-tuned, its optimiser/schedule, checkpoint averaging",
        f"time_limit {args.budget_s:.0f} s, max_epochs {args.max_epochs or 'AutoGluon default'}, seed {args.seed}",
    ], hyperparameters=hyperparameters, torch=torch.__version__)


if __name__ == "__main__":
    main()
