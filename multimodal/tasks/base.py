"""The task protocol: what the runner, the evaluate CLI (and search, export) ask of a kind of problem.

A task reads its data (`build_splits`), builds its model (`build_model`), scores gathered predictions
(`evaluate`, from `multimodal.training.predict`, the same DDP-aware path for validation, test and the
evaluate CLI) and writes its report (`write_report`). Subclass `Task`, then register it:
``multimodal.register_task("my_task", MyTask)``; ``model.task: my_task`` in a config selects it.

What a task needs is declared on its class (`label_type`, `uses_fusion`, ...), never read from the name it
is registered under; what a model needs from the data (token sequences) is asked of the fusion class
(`Fusion.requires_tokens`), never of its name.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import torch
from torch import nn

from encoders import Encoder, create_encoder
from fusion import Fusion, create_fusion, get_fusion_class
from multimodal.config.columns import modality_columns
from multimodal.config.schema import ConfigError, ExperimentConfig
from multimodal.data.dataset import MultimodalDataset
from multimodal.data.labels import LabelVocab
from multimodal.data.limits import MediaLimits
from multimodal.data.splits import DataSplits, build_splits
from multimodal.data.streaming import streaming_splits
from multimodal.evaluation.metrics import metric_mode
from multimodal.evaluation.report import EvalResult, write_result
from multimodal.training.accelerator import process_state


def create_encoders(cfg: ExperimentConfig, modalities: Optional[list[str]] = None) -> dict[str, Encoder]:
    """The configured encoders (all, or those of `modalities`), seeded, with gradient checkpointing as asked."""
    from accelerate.utils import set_seed

    mcfg = cfg.model
    set_seed(cfg.train.seed)
    names = sorted(m for m in mcfg.encoders if modalities is None or m in modalities)
    if not names:
        raise ConfigError(f"model.encoders has none of the modalities {modalities}")
    encoders = {m: create_encoder(mcfg.encoders[m], pretrained=mcfg.pretrained, **dict(mcfg.encoder_kwargs.get(m, {})))
                for m in names}
    checkpointed = mcfg.grad_checkpointing
    for m, enc in encoders.items():
        if checkpointed is True or (isinstance(checkpointed, list) and m in checkpointed):
            enc.set_grad_checkpointing(True)
    return encoders


def build_fusion(cfg: ExperimentConfig, encoders: dict[str, Encoder]) -> Fusion:
    """The configured fusion over `encoders`. A fusion that reads tokens (`requires_tokens`) also gets
    ``token_dims`` where an encoder's token width differs from its pooled width (e.g. timm MobileNetV3)."""
    mcfg = cfg.model
    kwargs = dict(mcfg.fusion_kwargs)
    cls = get_fusion_class(mcfg.fusion)
    token_dims = {m: e.token_dim for m, e in encoders.items() if getattr(e, "token_dim", e.output_dim) != e.output_dim}
    if cls.requires_tokens and token_dims:
        params = inspect.signature(cls).parameters
        if "token_dims" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise ConfigError(f"model.fusion={mcfg.fusion!r} reads tokens, and the tokens of {sorted(token_dims)} are "
                              f"not as wide as their pooled features ({token_dims}): the fusion needs a token_dims "
                              "argument (modality -> token width), as fusion.AttentionFusion has")
        kwargs.setdefault("token_dims", token_dims)
    return create_fusion(mcfg.fusion, {m: e.output_dim for m, e in encoders.items()}, mcfg.fusion_dim, **kwargs)


def apply_freezing(model: Any, cfg: ExperimentConfig) -> Any:
    """Freeze the encoders ``model.freeze_encoders`` names (true: all of them)."""
    value = cfg.model.freeze_encoders
    names = list(model.encoders) if value is True else [m for m in (value or []) if m in model.encoders]
    if names:
        model.freeze_encoders(names)
    return model


class Task:
    """One kind of learning problem (see the module docstring). Subclasses implement `build_model`,
    `evaluate` and `default_metric`; the rest has working defaults."""

    # How the dataset encodes labels: single_label, multi_label, regression, multitask or None (unlabelled).
    label_type: Optional[str] = None
    uses_fusion: bool = True  # whether model.fusion applies (checked against the fusion registry)
    contrastive: bool = False  # whether the loss couples a batch's rows (InfoNCE): what train.gradient_cache needs
    supports_baselines: bool = False  # whether eval.baselines trains single-modality models too
    # whether train.epochs=0 is a meaningful run (evaluate the model as built, e.g. a zero-shot classifier)
    allows_zero_epochs: bool = False
    batch_loss: bool = True  # whether validation needs the batch-mean loss from `predict`
    # Config values this task uses when the YAML and overrides leave them unset (see multimodal.config.schema).
    config_defaults: dict[str, Any] = {}

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg

    # -- config time ----------------------------------------------------------------------------
    @classmethod
    def check_config(cls, cfg: ExperimentConfig) -> None:
        """Raise `ConfigError` for settings this task cannot run with."""

    @classmethod
    def metric_names(cls, cfg: ExperimentConfig) -> Optional[set[str]]:
        """Names `train.metric_for_best` may take (None: not known in advance)."""
        return None

    # -- data -----------------------------------------------------------------------------------
    @property
    def modalities(self) -> list[str]:
        """The configured modalities, sorted."""
        return sorted(self.cfg.model.encoders)

    def label_column(self) -> Optional[str]:
        """The column the dataset encodes as labels (None: unlabelled)."""
        return self.cfg.data.label_column if self.label_type is not None else None

    def group_column(self) -> Optional[str]:
        """Rows sharing this column's value stay in one split (None: every row on its own)."""
        return None

    def build_splits(self, dataset: Any = None, progress: bool = True) -> DataSplits:
        """Validated train/validation/test splits of the configured data (training streamed with
        ``data.webdataset`` / ``data.stream_files``)."""
        if self.cfg.data.webdataset or self.cfg.data.stream_files:
            state = process_state()
            return streaming_splits(self.cfg, modality_columns(self.cfg, self.modalities), self.label_column(),
                                    self.label_type, state.process_index, state.num_processes)
        return build_splits(self.cfg.data, modality_columns(self.cfg, self.modalities), self.label_column(),
                            self.label_type, self.group_column(), dataset=dataset, progress=progress)

    def dataset_from_rows(self, rows: list[dict], base_dir: Optional[str], source: str,
                          labels: Optional[list[str]] = None, progress: bool = True) -> MultimodalDataset:
        """One evaluation dataset from table rows (the evaluate CLI), with the training label order `labels`."""
        data = self.cfg.data
        vocab = LabelVocab(labels, self.label_type) if labels and self.label_type in ("single_label", "multi_label") else None
        return MultimodalDataset(rows, modality_columns(self.cfg, self.modalities), self.label_column(), self.label_type,
                                 vocab, base_dir, source, data.on_bad_sample, data.required_modalities,
                                 data.multi_label_separator, data.validate, progress=progress,
                                 limits=MediaLimits.from_config(data))

    def train_groups(self, dataset: MultimodalDataset) -> Optional[list[list[int]]]:
        """Groups of rows of which the training sampler draws one per epoch (None: every row)."""
        return None

    def num_outputs(self, splits: DataSplits) -> Optional[int]:
        """Width of the task head, if the model has one."""
        return None

    # -- model ----------------------------------------------------------------------------------
    def build_model(self, splits: Optional[DataSplits], modalities: Optional[list[str]] = None) -> nn.Module:  # pragma: no cover
        """The model for these splits (all modalities, or only `modalities` for a baseline)."""
        raise NotImplementedError

    # -- evaluation -----------------------------------------------------------------------------
    def default_metric(self) -> str:  # pragma: no cover
        """The validation metric that selects the best epoch when ``train.metric_for_best`` is "auto"."""
        raise NotImplementedError

    def metric_mode(self, name: str) -> str:
        """'min' or 'max': which way metric `name` improves (losses, errors and ranks go down by default)."""
        return metric_mode(name)

    def evaluate(self, preds: dict[str, torch.Tensor], dataset: MultimodalDataset, model: nn.Module,
                 full: bool = True) -> EvalResult:  # pragma: no cover
        """Score gathered predictions on `dataset`; `full=False` (every epoch) may skip costly extras."""
        raise NotImplementedError

    def chance(self, splits: DataSplits, dataset: MultimodalDataset) -> dict[str, float]:
        """What guessing scores on `dataset` (empty when the metrics carry their own chance levels)."""
        return {}

    def write_report(self, output_dir: str, result: EvalResult, title: str, html: bool = False,
                     extra_plots: Optional[list[tuple[str, str]]] = None) -> str:
        """``report.md`` (+ plots, + ``report.html``) for one evaluated split."""
        return write_result(output_dir, result, title, html=html, extra_plots=extra_plots)

    @classmethod
    def headline(cls, metrics: dict[str, Any]) -> dict[str, float]:
        """The few metrics a summary line shows."""
        return {k: v for k, v in metrics.items() if isinstance(v, float) and "/" not in k and k != "loss"}
