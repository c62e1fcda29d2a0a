"""Peer (b): sentence-transformers' multimodal two-tower training for text-image retrieval.

Run with the st peer venv (benchmarks/peers/setup.sh), normally by race.py:

    /work/peer-venvs/st/bin/python benchmarks/peers/run_sentence_transformers.py --train train.csv \
        --validation validation.csv --test test.csv --out OUT --budget-s 600 \
        --text-model /work/peer-venvs/weights/minilm --image-model /work/peer-venvs/weights/tf_efficientnet_lite0

The model is one ``SentenceTransformer`` whose ``Router`` sends text to MiniLM -> mean pooling -> Dense(384, 256)
and images to EfficientNet-Lite0 (transformers' ``TimmWrapperModel`` on the exported timm folder, its own
``TimmWrapperImageProcessor``) -> mean pooling over the 7x7 map -> Dense(1280, 256): the same shape as the
framework's default DualEncoder (frozen towers, linear projections into 256-d). Loss: symmetric
``MultipleNegativesRankingLoss`` (both directions, like CLIP's), batches without duplicate images or captions
(``NoDuplicatesBatchSampler``). ``--tune text`` also trains MiniLM (LiT). Each epoch scores the validation split;
the best epoch's weights embed the test split. Writes result.json and test_text.npy / test_image.npy.
"""

from __future__ import annotations

import copy
import functools
import os

import numpy as np
import torch
from datasets import Dataset, Image
from peer_common import (
    BestTracker,
    elapsed,
    job_parser,
    read_split,
    retrieval_index,
    retrieval_metrics,
    write_result,
)
from PIL import Image as PILImage
from sentence_transformers import (
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from sentence_transformers.base.sampler import NoDuplicatesBatchSampler
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Router, Transformer
from transformers import TrainerCallback, set_seed


def freeze(module: torch.nn.Module) -> None:
    """No gradients and eval mode for good (BatchNorm statistics stay the pretrained ones), as in the framework."""
    module.requires_grad_(False)
    module.eval()
    original = module.train
    module.train = lambda mode=True: original(False)  # the trainer's model.train() must not reach this tower


def build_model(text_dir: str, image_dir: str, dim: int, tune_text: bool) -> SentenceTransformer:
    """Router over a text and an image tower, each pooled and linearly projected to ``dim``."""
    text = Transformer(text_dir, max_seq_length=128)
    image = Transformer(image_dir)
    if not tune_text:
        freeze(text.auto_model)
    freeze(image.auto_model)
    routes = {
        "text": [text, Pooling(text.get_embedding_dimension(), "mean"),
                 Dense(text.get_embedding_dimension(), dim, activation_function=torch.nn.Identity())],
        "image": [image, Pooling(image.get_embedding_dimension(), "mean"),
                  Dense(image.get_embedding_dimension(), dim, activation_function=torch.nn.Identity())],
    }
    return SentenceTransformer(modules=[Router(routes, route_mappings={(None, "text"): "text", (None, "image"): "image"})],
                               device="cpu")


def embed(model: SentenceTransformer, texts: list[str], images: list[str], batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of distinct captions and distinct image files."""
    t = model.encode(texts, batch_size=batch, convert_to_numpy=True)
    pics = [PILImage.open(p).convert("RGB") for p in images]
    v = model.encode(pics, batch_size=batch, convert_to_numpy=True)
    return t, v


class EpochEval(TrainerCallback):
    """Score validation every epoch, keep the best weights in memory, stop when the budget is spent."""

    def __init__(self, model, val_index, batch: int, budget_s: float, tracker: BestTracker):
        self.model, self.val_index, self.batch, self.budget_s, self.tracker = model, val_index, batch, budget_s, tracker
        self.best_state = None

    def on_step_end(self, args, state, control, **kw):
        if elapsed() > self.budget_s:
            control.should_training_stop = True
        return control

    def on_epoch_end(self, args, state, control, **kw):
        texts, images, pairs = self.val_index
        was_training = self.model.training
        self.model.eval()
        with torch.inference_mode():
            t, v = embed(self.model, texts, images, self.batch)
        self.model.train(was_training)
        m = retrieval_metrics(t, v, pairs)
        if self.tracker.update(m["rsum"], epoch=state.epoch, **{k: m[k] for k in ("t2i_R@1", "i2t_R@1")}):
            self.best_state = copy.deepcopy({k: p.detach().clone() for k, p in self.model.state_dict().items()})
        print(f"epoch {state.epoch:.0f}: validation rsum {m['rsum']:.3f} at {elapsed():.0f}s", flush=True)
        return control


def main() -> None:
    """Train the two towers' projections, pick the best epoch on validation rsum, embed the test split."""
    parser = job_parser(__doc__.splitlines()[0])
    parser.add_argument("--tune", choices=["none", "text"], default="none", help="text: also train MiniLM (LiT)")
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    train, val, test = (read_split(p, ["text", "image"]) for p in (args.train, args.validation, args.test))
    model = build_model(args.text_model, args.image_model, 256, args.tune == "text")
    data = Dataset.from_dict({"image": list(train["image"].astype(str)), "text": list(train["text"].astype(str))})
    data = data.cast_column("image", Image())
    loss = MultipleNegativesRankingLoss(model, directions=("query_to_doc", "doc_to_query"))
    tracker = BestTracker("rsum")
    callback = EpochEval(model, retrieval_index(val), args.batch_size, args.budget_s, tracker)
    targs = SentenceTransformerTrainingArguments(
        output_dir=os.path.join(args.out, "st"), num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, warmup_steps=0.05, router_mapping={"image": "image", "text": "text"}, lr_scheduler_type="cosine", weight_decay=0.01, seed=args.seed,
        batch_sampler=functools.partial(NoDuplicatesBatchSampler, precompute_hashes=True, precompute_num_proc=1),
        save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
        logging_strategy="epoch", disable_tqdm=True,
    )
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=data, loss=loss, callbacks=[callback])
    trainer.train()
    if callback.best_state is not None:
        model.load_state_dict(callback.best_state)
    model.eval()
    texts, images, pairs = retrieval_index(test)
    with torch.inference_mode():
        t, v = embed(model, texts, images, args.batch_size)
    np.save(os.path.join(args.out, "test_text.npy"), t)
    np.save(os.path.join(args.out, "test_image.npy"), v)
    write_result(args.out, "sentence-transformers", tracker, [
        "Router(text: MiniLM -> mean pool -> Dense 384->256; image: EfficientNet-Lite0 (TimmWrapperModel) -> mean pool"
        " -> Dense 1280->256)", f"towers frozen in eval mode: {'image only (LiT)' if args.tune == 'text' else 'both'}",
        f"symmetric MultipleNegativesRankingLoss (scale 20), NoDuplicatesBatchSampler, batch {args.batch_size}, "
        f"AdamW lr {args.lr}, cosine, warmup 5%, up to {args.epochs} epochs",
    ], trained_epochs=float(trainer.state.epoch or 0), torch=torch.__version__)


if __name__ == "__main__":
    main()
