"""Peer (c): a plain Hugging Face ``transformers.Trainer`` fine-tuning the text tower alone (sequence classification).

Run with the hf peer venv (benchmarks/peers/setup.sh), normally by race.py:

    /work/peer-venvs/hf/bin/python benchmarks/peers/run_hf_trainer.py --train train.csv --validation validation.csv \
        --test test.csv --out OUT --budget-s 600 --text-model /work/peer-venvs/weights/minilm

``AutoModelForSequenceClassification`` on the packaged all-MiniLM-L6-v2 folder (BERT: pooler + linear classifier,
the classifier freshly initialised), every weight trained, the usual recipe of the transformers docs: AdamW at
5e-5, linear decay, 10% warmup, evaluation each epoch, the best epoch on validation macro-F1 reloaded at the end.
Training stops when the budget is spent (checked after every step). Writes result.json and predictions.csv
(test rows in order).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from peer_common import BestTracker, elapsed, job_parser, read_split, write_result
from sklearn.metrics import accuracy_score, f1_score
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)


class TextDataset(torch.utils.data.Dataset):
    """Tokenised captions with integer labels."""

    def __init__(self, encodings: dict, labels: list[int]):
        self.encodings, self.labels = encodings, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        item = {k: torch.tensor(v[i]) for k, v in self.encodings.items()}
        item["labels"] = torch.tensor(self.labels[i])
        return item


class Budget(TrainerCallback):
    """Stop training once the time budget is spent; record each validation score with its time."""

    def __init__(self, budget_s: float, tracker: BestTracker):
        self.budget_s, self.tracker = budget_s, tracker

    def on_step_end(self, args, state, control, **kw):
        if elapsed() > self.budget_s:
            control.should_training_stop = True  # the trainer still scores the partial epoch
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        if metrics and "eval_macro_f1" in metrics:
            self.tracker.update(metrics["eval_macro_f1"], accuracy=metrics["eval_accuracy"], epoch=state.epoch)


def main() -> None:
    """Fine-tune, select the best epoch on validation, predict the test split."""
    args = job_parser(__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    train, val, test = (read_split(p, ["text", "label"]) for p in (args.train, args.validation, args.test))
    labels = sorted(set(train["label"].astype(str)))
    index = {name: i for i, name in enumerate(labels)}
    tok = AutoTokenizer.from_pretrained(args.text_model)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.text_model, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=index
    )

    def dataset(df):
        enc = tok(list(df["text"].astype(str)), truncation=True, max_length=128)
        return TextDataset(enc, [index.get(str(v), -100) for v in df["label"]])

    def metrics(pred):
        y_pred = pred.predictions.argmax(-1)
        y = pred.label_ids
        return {"accuracy": accuracy_score(y, y_pred),
                "macro_f1": f1_score(y, y_pred, average="macro", labels=list(range(len(labels))), zero_division=0)}

    tracker = BestTracker("macro_f1")
    targs = TrainingArguments(
        output_dir=os.path.join(args.out, "hf"), num_train_epochs=args.epochs, learning_rate=5e-5,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64, warmup_steps=0.1,
        weight_decay=0.01, eval_strategy="epoch", save_strategy="epoch", save_total_limit=1,
        load_best_model_at_end=True, metric_for_best_model="macro_f1", report_to=[], seed=args.seed,
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, logging_strategy="epoch",
        disable_tqdm=True, save_only_model=True,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=dataset(train), eval_dataset=dataset(val),
                      processing_class=tok, compute_metrics=metrics, callbacks=[Budget(args.budget_s, tracker)])
    trainer.train()
    pred = trainer.predict(dataset(test)).predictions.argmax(-1)
    out = os.path.join(args.out, "predictions.csv")
    test.assign(prediction=[labels[i] for i in pred])[["label", "prediction"]].to_csv(out, index=False)
    write_result(args.out, "transformers.Trainer", tracker, [
        "AutoModelForSequenceClassification (BERT pooler + linear head, head freshly initialised), all weights train",
        f"AdamW lr 5e-5, warmup 10%, linear decay, batch {args.batch_size}, max_length 128, up to {args.epochs} epochs",
    ], labels=labels, trained_epochs=float(trainer.state.epoch or 0), torch=torch.__version__,
        cuda=torch.cuda.is_available(), np=np.__version__)


if __name__ == "__main__":
    main()
