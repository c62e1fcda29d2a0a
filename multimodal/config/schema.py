"""The experiment config: a tree of dataclasses, one section per concern, each number with its allowed range.

Defaults live here, except the few a task or a built-in demo sets for itself (`Task.config_defaults`,
`multimodal.data.demos`): values resolve as dataclass default < task default < demo default < YAML file
< ``key=value`` override, and the resolved config is written next to every run's outputs.

Every numeric field declares its allowed values as field metadata, ``ranged(default, Range(...))`` (or
``field(..., metadata={"range": Range(...)})`` in a user's own section); `multimodal.config.checks` checks them,
with everything else, once when a config is loaded.
"""

from __future__ import annotations

import reprlib
from dataclasses import MISSING, dataclass, field
from typing import Any, Literal, Optional, Union

_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist = 80, 80, 6
SEED_MAX = 2**32 - 1  # numpy's global seed limit (accelerate's set_seed seeds numpy too)
WIDTH_MAX = 2**16  # layer widths beyond this would not fit in memory anyway


class ConfigError(ValueError):
    """A config key is unknown, its value has the wrong type or range, or it names something not registered."""


def short(value: Any) -> str:
    """A bounded repr of a config value for error messages."""
    return _short.repr(value)


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric field: ``low <= v <= high``, either end optional or exclusive."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False  # True: low itself is not allowed
    high_open: bool = False
    note: str = ""  # e.g. "null turns clipping off"

    def contains(self, value: float) -> bool:
        """Whether `value` lies in the range."""
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True

    def describe(self) -> str:
        """The range as text: '>= 1', '> 0', 'in [0, 1)'."""
        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {_num(self.low)}"
        elif self.high is not None:
            text = f"{'<' if self.high_open else '<='} {_num(self.high)}"
        else:
            text = "any finite number"
        return f"{text} ({self.note})" if self.note else text


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


POSITIVE = Range(1)  # integers >= 1
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1, high_open=True)  # a probability that must leave something: [0, 1)
PROBABILITY = Range(0, 1, note="a probability")
SEED = Range(0, SEED_MAX)
WIDTH = Range(1, WIDTH_MAX)


def ranged(default: Any, allowed: Range, *, factory: Any = MISSING) -> Any:
    """A dataclass field whose value (or each value of a list) must lie in `allowed`; checked at load time."""
    if factory is not MISSING:
        return field(default_factory=factory, metadata={"range": allowed})
    return field(default=default, metadata={"range": allowed})


@dataclass
class DataConfig:
    """Where the paired data comes from and how rows map to modalities and labels."""

    # Manifests (CSV, TSV, JSONL or Parquet); relative file paths inside them resolve against the manifest's folder.
    train: Optional[str] = None
    validation: Optional[str] = None
    test: Optional[str] = None
    # A `datasets` directory saved with `save_to_disk` (Dataset or DatasetDict), instead of manifests.
    hf_dataset: Optional[str] = None
    # A built-in demo generated locally (see `multimodal.data.list_demos()`); ignores the manifests above.
    demo: Optional[str] = None
    demo_size: Optional[int] = ranged(None, Range(1, note="null: the demo's own size"))
    demo_dir: Optional[str] = None  # None: $MULTIMODAL_CACHE/demo or ~/.cache/multimodal-finetune/demo
    # Column names; a modality whose column is null is not read.
    text_column: Optional[str] = "text"
    image_column: Optional[str] = "image"
    audio_column: Optional[str] = "audio"
    label_column: Optional[str] = "label"
    # Columns of modalities other than text/image/audio (e.g. a user encoder's "tabular": its column).
    columns: dict[str, str] = field(default_factory=dict)
    # Column holding "train"/"validation"/"test" per row, if the table carries its own split.
    split_column: Optional[str] = None
    # Rows sharing this column's value stay in one split (retrieval default: the item's file column).
    group_column: Optional[str] = None
    multi_label_separator: str = "|"
    # Fixed label vocabulary (its order is the model's output order); by default built from the training split.
    labels: Optional[list[str]] = None
    # Held-out fractions of the rows (or groups) when the data does not name a validation/test split.
    val_fraction: float = ranged(0.1, FRACTION)
    test_fraction: float = ranged(0.1, FRACTION)
    split_seed: int = ranged(0, SEED)
    stratify: bool = True
    # Modalities that must be present in every row; an absent one elsewhere becomes present=False.
    required_modalities: list[str] = field(default_factory=list)
    on_bad_sample: Literal["error", "skip"] = "error"
    # Open/verify every file once when the dataset is built, so errors and skip counts come before training.
    validate: bool = True
    num_workers: int = ranged(2, Range(0, 256, note="0 loads in the main process"))
    # Frozen-encoder feature cache: "auto" ($MULTIMODAL_CACHE/features), a directory, or null (off). Only
    # encoders that stay frozen for the whole run are cached (eval preprocessing, so no augmentation).
    feature_cache: Optional[str] = "auto"
    # Precision of the frozen towers while they fill the cache: fp32 (the default: a linear probe on bf16 features
    # scored 0.35 +- 0.31 points below fp32 on real photos, BENCHMARKS.md section 12), bf16 (about 1.8x faster where
    # the hardware computes it natively), or "auto" = bf16 where the CPU/GPU computes it natively (AVX-512 BF16, AMX,
    # a bf16 GPU) and the tower's bf16 features agree with fp32 on the first items (cosine >= 0.99), else fp32. Part
    # of the cache key: bf16 and fp32 features are never mixed. Convolutional towers run channels_last either way.
    feature_cache_precision: Literal["auto", "fp32", "bf16"] = "fp32"
    # What runs the frozen towers of an fp32 fill: torch; onnx = ONNX Runtime (the tower exported once into the cache
    # folder, kept only if its features match torch fp32 on the first items, else torch with a warning; needs the
    # deploy extra); or "auto" = onnx where onnxruntime is installed and it pays (the folder already holds the
    # export, or at least 512 items to encode), else torch. ORT features are fp32 features: same cache folder.
    feature_cache_backend: Literal["auto", "torch", "onnx"] = "auto"
    max_train_samples: Optional[int] = ranged(None, Range(1, note="null: all rows"))
    # Few-shot: K seeded training rows per class (K groups per class with group_column), validation cut to at most
    # K per class too; single-label only.
    shots_per_class: Optional[int] = ranged(None, Range(1, note="null: every training row"))
    # Cross-validation in one run: K (scikit-learn's seeded StratifiedKFold, StratifiedGroupKFold with group_column)
    # or "groups" (leave one group_column value out per fold). Each fold's validation split is carved from its
    # training folds.
    folds: Optional[Union[int, str]] = None
    # ... or the column that names each row's fold (e.g. ESC-50's fold 1-5): one fold per distinct value.
    fold_column: Optional[str] = None
    # Run only these folds (positions in the list of folds, from 0), e.g. [0, 2]; null: every fold.
    only_folds: Optional[list[int]] = ranged(None, Range(0, note="fold positions, from 0"))
    # Seed of the K-shot sample (None: split_seed), so shots can vary while the splits (and a demo) stay fixed.
    shots_seed: Optional[int] = ranged(None, SEED)
    # Training-time augmentation (see AugmentConfig); an augmented modality is never read from the feature cache.
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig())
    # Stream the training data instead of data.train (validation/test stay manifests): WebDataset tar shards
    # written by multimodal-write-shards ("shards/shard-{000000..000099}.tar"), or CSV/JSONL/Parquet files
    # read with datasets' streaming=True ("parts/*.parquet"). See multimodal.data.streaming.
    webdataset: Optional[str] = None
    stream_files: Optional[str] = None
    # Undecoded records per process in the streaming shuffle buffer.
    shuffle_buffer: int = ranged(1000, Range(1, note="records per process in the streaming shuffle buffer"))
    # What one sample may cost to decode (`multimodal.data.limits.MediaLimits`; null: its default). A sample over a
    # limit is a bad sample (data.on_bad_sample): refused from its header, before it is decoded.
    # Images over max_image_pixels: JPEGs are decoded at 1/2-1/8 scale instead, other formats refused.
    max_image_pixels: Optional[int] = ranged(None, Range(1, note="null: 16,000,000"))
    max_image_aspect: Optional[float] = ranged(None, Range(1, note="null: 32 (longest side / shortest side)"))
    max_audio_seconds: Optional[float] = ranged(None, Range(0, low_open=True, note="null: 600, from the file header"))
    max_audio_rate: Optional[int] = ranged(None, Range(1, 384_000, note="null: 192,000 Hz"))
    max_text_chars: Optional[int] = ranged(None, Range(1, note="null: 100,000; longer texts are cut before tokenising"))


@dataclass
class ModelConfig:
    """Encoders (by spec string), fusion and head, or the towers of a two-tower model."""

    # modality -> encoder spec, e.g. {text: "text:sentence-transformers/all-MiniLM-L6-v2"}.
    encoders: dict[str, str] = field(
        default_factory=lambda: {
            "text": "text:sentence-transformers/all-MiniLM-L6-v2",
            "image": "image:tf_efficientnet_lite0",
        }
    )
    # modality -> extra kwargs for `create_encoder` (e.g. {image: {img_size: 288}}).
    encoder_kwargs: dict[str, dict] = field(default_factory=dict)
    pretrained: bool = True
    # A registered fusion (`fusion.list_fusions()`); classification tasks only.
    fusion: str = "concat"
    # Width of the fused vector (classification) or of the shared embedding space (retrieval).
    fusion_dim: int = ranged(256, WIDTH)
    fusion_kwargs: dict[str, Any] = field(default_factory=dict)
    # A registered task (`multimodal.list_tasks()`): single_label, multi_label, regression, retrieval, ...
    task: str = "single_label"
    head_hidden_dim: Optional[int] = ranged(None, Range(1, WIDTH_MAX, note="null: a linear head"))
    head_dropout: float = ranged(0.1, FRACTION)
    modality_dropout: float = ranged(0.0, FRACTION)
    # true: freeze every encoder; a list: freeze those modalities (e.g. [image] for LiT); false: train all.
    freeze_encoders: Union[bool, list[str]] = False
    # Frozen encoders train again from this epoch on.
    unfreeze_after_epochs: Optional[int] = ranged(None, NON_NEGATIVE)
    # Gradient checkpointing through each encoder family's own API (timm set_grad_checkpointing, transformers
    # gradient_checkpointing_enable): recompute activations in backward. true: every encoder; a list: those modalities.
    grad_checkpointing: Union[bool, list[str]] = False
    # LoRA adapters through the peft library (see PeftConfig); only adapters and heads train.
    peft: Optional[PeftConfig] = None
    # Train only the last N blocks of these encoders (e.g. {image: 2, text: 1}); the rest stays frozen.
    unlock_last_blocks: dict[str, int] = ranged(MISSING, NON_NEGATIVE, factory=dict)
    # Task multitask: name -> {column, task (single_label|multi_label|regression), weight, labels}; one head each.
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    # A saved model folder whose weights start this run (task prompt_classifier: a two-tower model).
    init_from: Optional[str] = None
    # Task prompt_classifier: class weights from prompt-template text embeddings ("prompts") or random.
    classifier_init: Literal["prompts", "random"] = "prompts"


ADVERSARIAL_TARGETS = {"image": "image", "audio": "audio", "text_embeddings": "text"}
"""Entries of ``train.adversarial.on`` and the modality each perturbs."""


@dataclass
class AdversarialConfig:
    """Adversarial training (train.adversarial): perturbations that maximise the loss, inside an epsilon ball."""

    method: Literal["fgsm", "pgd"] = "pgd"
    # Radius: one number, or one per entry of `on`. image: L-inf in [0, 1] pixel units; audio: L-inf in the
    # encoder's float input (the waveform for audio-mel); text_embeddings: L2 per example over its tokens.
    epsilon: Union[float, dict[str, float]] = ranged(0.03, Range(0, low_open=True))
    steps: int = ranged(3, POSITIVE)  # ascent steps (pgd); fgsm takes one
    # Default: 2.5 * epsilon / steps (pgd), 1.25 * epsilon (fgsm).
    step_size: Optional[float] = ranged(None, Range(0, low_open=True, note="null: from epsilon and steps"))
    on: list[str] = field(default_factory=lambda: ["image"])  # image, audio, text_embeddings
    # True: each batch trains on its clean and its adversarial copy (half the loss each); False: adversarial only.
    mix: bool = True


@dataclass
class DistillConfig:
    """Knowledge distillation from a trained teacher model folder (`multimodal.training.distill`)."""

    teacher: str = ""  # the teacher's model folder (save_pretrained), e.g. outputs/<run>/model (required)
    # Weight of the distillation loss; the task loss gets (1 - alpha).
    alpha: float = ranged(0.5, Range(0, 1))
    temperature: float = ranged(2.0, Range(0, low_open=True))
    # The teacher folder may hold encoders saved with trust_remote_code: allow their code to run.
    trust_remote_code: bool = False


@dataclass
class TrainConfig:
    """Optimisation, schedule, checkpointing and early stopping."""

    output_dir: str = "outputs/run"
    epochs: int = ranged(3, Range(0, note="0 only for tasks that evaluate an untrained model (prompt_classifier)"))
    batch_size: int = ranged(32, POSITIVE)
    encoder_lr: float = ranged(2e-5, Range(0, note="0 leaves the trainable encoders unchanged"))
    head_lr: float = ranged(1e-3, Range(0, low_open=True))
    weight_decay: float = ranged(0.01, NON_NEGATIVE)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = ranged(0.1, Range(0, 1))
    warmup_steps: Optional[int] = ranged(None, Range(0, note="null: warmup_ratio of the steps"))
    grad_accum_steps: int = ranged(1, POSITIVE)
    # Gradient caching (contrastive tasks): embed the batch without graphs, cache the loss's gradients w.r.t. the
    # embeddings, then re-run and back-propagate contrastive_chunk_size rows at a time. The negatives are the whole
    # batch_size (x processes) while activations are those of one chunk; about one extra forward pass per step.
    gradient_cache: bool = False
    contrastive_chunk_size: int = ranged(32, POSITIVE)
    max_grad_norm: Optional[float] = ranged(1.0, Range(0, low_open=True, note="null turns clipping off"))
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    seed: int = ranged(42, SEED)
    log_every: int = ranged(10, POSITIVE)
    log_with: Literal["auto", "tensorboard", "none"] = "auto"
    # Checkpoints (accelerator.save_state) go to output_dir/checkpoints/.
    save_checkpoints: bool = True
    save_every_steps: Optional[int] = ranged(None, Range(1, note="null: checkpoints at epoch ends only"))
    keep_checkpoints: Optional[int] = ranged(2, Range(1, note="null keeps all"))
    # A checkpoint directory, or "latest" for the newest one under output_dir/checkpoints.
    resume_from: Optional[str] = None
    # Stop the run (after checkpointing) once this many optimizer steps are done; the schedule is unchanged.
    stop_after_steps: Optional[int] = ranged(None, POSITIVE)
    early_stopping_patience: Optional[int] = ranged(None, Range(1, note="null: no early stopping"))
    # "auto": the task's own (macro_f1, micro_f1, mse, rsum); any key of the task's validation metrics.
    metric_for_best: str = "auto"
    metric_mode: Literal["auto", "max", "min"] = "auto"
    progress_bar: bool = True
    # Adversarial training (see AdversarialConfig); null: off.
    adversarial: Optional[AdversarialConfig] = None
    # Knowledge distillation from a trained teacher (fused: logits; two-tower: similarity matrices); null: off.
    distill: Optional[DistillConfig] = None
    # The fine-tuning method: probe (train.linear_probe), head (frozen encoders, fusion + head trained), lora
    # (model.peft), last_blocks (model.unlock_last_blocks), full (every encoder trains), or auto (fit the probe,
    # then the trained methods the data size and train.time_budget_s allow; keep the best on validation).
    # null: the switches below and in `model` decide, as before this key existed.
    method: Optional[Literal["auto", "probe", "head", "lora", "last_blocks", "full"]] = None
    # Seconds the run may train: training stops between epochs once the next epoch would not fit (null: no
    # limit); method auto shares it among its candidates (null there: 600).
    time_budget_s: Optional[float] = ranged(None, Range(0, low_open=True, note="null: no limit"))
    # Linear probe: frozen encoders, standardised concatenated features, scikit-learn's logistic regression; its
    # L2 strength C is chosen from probe_cs (default: LogisticRegressionCV's 10 values 1e-4 .. 1e4, and 1) by
    # stratified (grouped) k-fold cross-validation over the training rows, repeated probe_cv_repeats times with
    # other shuffles, by probe_select (accuracy and 3 repeats: BENCHMARKS.md section 10e, the real dev sets).
    linear_probe: bool = False
    probe_cs: Optional[list[float]] = ranged(
        None, Range(0, low_open=True, note="inverse L2 strengths of the linear probe"))
    probe_select: Literal["log_loss", "accuracy"] = "accuracy"
    probe_cv_folds: int = ranged(5, Range(2, note="folds of the probe's cross-validation of C"))
    probe_cv_repeats: int = ranged(3, Range(1, note="repetitions of the probe's cross-validation, other shuffles"))
    # After choosing C (probe) or the epoch count (trained heads) on validation, refit on train+validation.
    # null: on for the linear probe, off otherwise.
    refit_full: Optional[bool] = None
    # LP-FT: fit the linear probe first (as train.linear_probe, C chosen on validation, no refit), then
    # fine-tune from it. The fusion becomes the probe's standardised concatenation and the head linear.
    probe_init: bool = False
    # BatchNorm running statistics stay at their pretrained values while encoders train (norms in eval mode; their
    # affine weights still train). False: only BatchNorms whose parameters are all frozen keep their statistics.
    # Default chosen by measurement (BENCHMARKS.md section 11, full fine-tuning of the packaged EfficientNet-Lite0,
    # 240 training rows, 4 epochs, one seed): frozen beat re-estimated statistics on all three sets measured,
    # by 11.3 points on sign_digits, 6.7 on trashnet and 15.8 on urbansound. model.pretrained=false makes the
    # default false (random-init statistics mean nothing); an explicit value wins.
    freeze_norm_stats: bool = True
    # Layer-wise LR decay: an encoder layer k below the top gets encoder_lr * layer_decay**k (e.g. 0.75).
    layer_decay: Optional[float] = ranged(None, Range(0, 1, low_open=True, note="1: no decay"))
    # EMA of the weights (timm ModelEmaV3), updated every optimizer step, evaluated every epoch, checkpointed.
    ema_decay: Optional[float] = ranged(None, Range(0, 1, low_open=True, high_open=True))
    ema_warmup: bool = True  # decay ramps up from 0 (1 - (1 + step)^-2/3), so short runs average sensibly
    ema_save: bool = True  # select the best epoch on, and save, the EMA weights (false: the raw weights)
    # WiSE-FT: interpolate start and fine-tuned weights at these alphas, keep the best on validation.
    wise_ft_alphas: Optional[list[float]] = ranged(
        None, Range(0, 1, note="0: the starting weights, 1: the fine-tuned ones"))
    # Replace an earlier run found in output_dir (metrics.json, model/, checkpoints/); false: refuse to start.
    overwrite_output_dir: bool = False
    # Seconds any collective may wait for the other processes before failing the run (null: torch's default,
    # 10-30 min); a hung or lost rank then ends the job with an error instead of stalling it.
    dist_timeout_s: Optional[float] = ranged(None, Range(0, low_open=True, note="null: torch's default"))


@dataclass
class EvalConfig:
    """Evaluation and reporting."""

    batch_size: Optional[int] = ranged(None, Range(1, note="null: train.batch_size"))
    # Also train one single-modality model per modality (same settings) and record their test metrics.
    baselines: bool = False
    # Recall@K cut-offs for retrieval tasks.
    recall_at: list[int] = ranged(MISSING, POSITIVE, factory=lambda: [1, 5, 10])
    # report.md (and report.html) for the test split, with plots.
    html_report: bool = True
    num_examples: int = ranged(5, NON_NEGATIVE)


@dataclass
class RetrievalConfig:
    """Two-tower (contrastive) options, used by the retrieval task."""

    # Each epoch draws one row per item (group), so an item never appears twice in a (global) batch and
    # its other captions are never its negatives. False: every row, plain shuffling.
    one_caption_per_item: bool = True
    projection: Literal["linear", "mlp"] = "linear"
    projection_hidden_dim: Optional[int] = ranged(None, Range(1, WIDTH_MAX, note="null: the embedding width"))
    # Contrast against the global batch across processes (all-gather) rather than the local one.
    gather: bool = True
    # Zero-shot classification of each non-text modality from the label column, when there is one.
    zero_shot: bool = True
    # Prompt templates with {} for the class name (default: per-modality templates).
    templates: Optional[list[str]] = None


@dataclass
class ExperimentConfig:
    """A whole experiment: data, model, training, evaluation and the retrieval task's options."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)


@dataclass
class AugmentConfig:
    """Training-time augmentation, seeded per batch by the collate function (resume stays bit-identical).

    Image and audio options wrap the encoder's own train preprocessing; mixup/cutmix mix whole batches
    (image and audio modalities only) with soft labels. null/0 leaves the encoder's defaults.
    """

    # timm RandAugment string (e.g. "rand-m9-mstd0.5-inc1"), or "randaugment" / "trivialaugment".
    image_auto_augment: Optional[str] = None
    # RandomResizedCrop area range; timm's default (0.08, 1).
    image_scale: Optional[list[float]] = ranged(None, Range(0, 1, low_open=True, note="RandomResizedCrop area fractions"))
    image_hflip: Optional[float] = ranged(None, PROBABILITY)  # timm's default 0.5 (use 0 for digits and text)
    image_color_jitter: Optional[float] = ranged(None, NON_NEGATIVE)  # timm's default 0.4
    audio_gain_db: float = ranged(0.0, NON_NEGATIVE)  # random gain, uniform in +-dB
    audio_shift_seconds: float = ranged(0.0, NON_NEGATIVE)  # random circular time shift, uniform in +-seconds
    spec_freq_masks: int = ranged(0, NON_NEGATIVE)  # SpecAugment frequency masks per clip (audio-mel encoders)
    spec_freq_mask_width: float = ranged(0.15, Range(0, 1, note="a fraction of the mel bins"))  # widest mask
    spec_time_masks: int = ranged(0, NON_NEGATIVE)  # SpecAugment time masks per clip (audio-mel encoders)
    spec_time_mask_width: float = ranged(0.1, Range(0, 1, note="a fraction of the clip"))  # widest mask
    mixup_alpha: float = ranged(0.0, Range(0, note="0 turns mixup off"))  # Beta(alpha, alpha) mixing (timm's helpers)
    cutmix_alpha: float = ranged(0.0, Range(0, note="0 turns cutmix off"))  # images only; with mixup, one of the two
    mix_prob: float = ranged(1.0, PROBABILITY)  # probability that a batch is mixed
    label_smoothing: float = ranged(0.0, FRACTION)  # applied with mixup/cutmix targets


@dataclass
class PeftConfig:
    """LoRA through the peft library. target_modules: module-name suffixes, for all encoders (a list) or per
    modality (a mapping); null: the family default (see multimodal.models.peft.DEFAULT_TARGETS)."""

    method: Literal["lora"] = "lora"
    r: int = ranged(8, POSITIVE)
    alpha: float = ranged(16.0, Range(0, low_open=True, note="LoRA scaling is alpha / r"))
    dropout: float = ranged(0.0, FRACTION)
    target_modules: Optional[Union[list[str], dict[str, list[str]]]] = None
    modalities: Optional[list[str]] = None  # null: every encoder
