"""Training loop on Hugging Face Accelerate, kept out of the model modules.

`Trainer(model, config, train_loader, eval_loader, compute_metrics_fn=...)` runs epochs of AdamW over the
model's parameter groups (`multimodal.training.optim`) with transformers' LR schedule stepped per optimizer
step (`multimodal.training.schedule`), gradient accumulation (``accelerator.accumulate``), clipping and mixed
precision; evaluates every epoch through `multimodal.training.predict` (outputs gathered with
``accelerator.gather_for_metrics``, each validation example counted once under DDP) and the caller's
`compute_metrics_fn`; keeps the best model (``save_pretrained``), stops early on a chosen metric, and
checkpoints with ``accelerator.save_state`` (the LR scheduler registered for checkpointing).

Exact resume: a checkpoint holds model/optimizer/scheduler/RNG states (accelerate) plus
``trainer_state.json`` (epoch, batch position in the epoch, global step, early-stopping state, history).
The training order depends only on (seed, epoch) (`multimodal.data.EpochSampler`), random augmentation is
seeded per batch from (seed, epoch, sample indices) without touching the global RNGs
(`multimodal.data.Collator`), and the DataLoader draws worker seeds from its own generator. So resuming
at an epoch boundary, or mid-epoch (``save_every_steps``; ``accelerator.skip_first_batches``),
reproduces the uninterrupted run bit-for-bit on CPU with the same seed.

The model is any module following the models' contract: ``model(inputs=, present=, labels=, features=)
-> output`` with ``.loss`` (which may need no labels, as InfoNCE), ``.logits`` and/or ``.embeddings``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Optional

import torch
from accelerate.utils import set_seed
from torch import nn

from multimodal.config.checks import check_ranges
from multimodal.config.schema import ConfigError
from multimodal.data.loading import epoch_seed
from multimodal.evaluation.metrics import improves, metric_mode, saturation_warning
from multimodal.progress import progress_bar
from multimodal.training.accelerator import flat_config, make_accelerator
from multimodal.training.adversarial import Adversary
from multimodal.training.checkpoints import folder_mib, resolve_latest, resume_target, save_checkpoint
from multimodal.training.distributed import configure_fsdp, full_state_dict, is_sharded, load_saved_weights
from multimodal.training.ema import WeightEma
from multimodal.training.gradcache import GradientCache
from multimodal.training.integrity import check_finite, check_finite_loss, training_tensors
from multimodal.training.optim import make_optimizer
from multimodal.training.options import TrainerOptions
from multimodal.training.predict import evaluation_metrics, forward_batch, predict
from multimodal.training.schedule import make_scheduler
from multimodal.training.trainer_state import EpochLosses, TrainerState

__all__ = ["Trainer", "TrainerOptions"]


class Trainer:
    """Accelerate training loop for models following the `MultimodalModel` / `DualEncoder` contract."""

    def __init__(self, model: nn.Module, config: Any, train_loader: torch.utils.data.DataLoader,
                 eval_loader: Optional[torch.utils.data.DataLoader] = None, *, options: Optional[TrainerOptions] = None,
                 accelerator: Any = None, **keywords: Any) -> None:
        """`config` is a `multimodal.config.TrainConfig` (its ranges are checked here when it did not come through
        the config loader); `options` (`TrainerOptions`, or its fields as keywords) say how to score, select,
        report and start. ``config.adversarial`` trains on adversarial examples (`Adversary`)."""
        options = TrainerOptions.merged(options, keywords)
        if dataclasses.is_dataclass(config):
            check_ranges(config, "train.")  # e.g. a negative max_grad_norm would turn training into ascent
        self.config, self.options, self.output_dir = config, options, config.output_dir
        self.unfreeze_epoch = options.unfreeze_after_epochs
        self.accelerator = accelerator or make_accelerator(config, unfreeze_later=self.unfreeze_epoch is not None)
        set_seed(config.seed)
        self.compute_metrics_fn, self.eval_batch_loss = options.compute_metrics_fn, options.eval_batch_loss
        self.callbacks, self.loss_fn = list(options.callbacks or []), options.loss_fn
        adversarial = getattr(config, "adversarial", None)
        self.adversary = Adversary(adversarial, autocast=self.accelerator.autocast) if adversarial is not None else None
        self.state = TrainerState()
        self._epoch_loss: Optional[float] = None
        self._saturation_warned = False  # a saturated small validation set is named once per run
        self.budget_stop: Optional[str] = None  # why train.time_budget_s ended the run early, if it did
        self.metric_for_best = config.metric_for_best if config.metric_for_best != "auto" else (
            options.metric_for_best or "loss")
        self.metric_mode = (config.metric_mode if config.metric_mode != "auto"
                            else options.metric_mode_for_best or metric_mode(self.metric_for_best))
        self._prepare(model, train_loader, eval_loader)
        self.gradient_cache = GradientCache.for_trainer(self) if getattr(config, "gradient_cache", False) else None
        ema_decay = getattr(config, "ema_decay", None)
        self.ema = WeightEma(self.unwrapped_model, ema_decay, getattr(config, "ema_warmup", True)) if ema_decay else None
        self.updates_per_epoch = max(1, math.ceil(len(self.train_loader) / config.grad_accum_steps))
        self.total_steps = self.updates_per_epoch * config.epochs
        self.state.epoch = options.start_epoch
        self.state.global_step = options.start_epoch * self.updates_per_epoch
        self.scheduler = make_scheduler(self.optimizer.optimizer, config, self.total_steps, self.state.global_step)
        self.accelerator.register_for_checkpointing(self.scheduler)

    def _prepare(self, model: nn.Module, train_loader: Any, eval_loader: Any) -> None:
        """The optimizer, then model, optimizer and loaders through ``accelerator.prepare`` (DDP / FSDP / devices)."""
        accelerator = self.accelerator
        if hasattr(model, "freeze_norm_stats"):  # BatchNorm statistics fixed (or not) before any forward
            model.freeze_norm_stats(enabled=getattr(self.config, "freeze_norm_stats", False))
        optimizer = make_optimizer(model, self.config, self.unfreeze_epoch is not None)
        self.fsdp_block_classes = configure_fsdp(accelerator, model)  # None unless launched with an FSDP config
        frozen = [m for m, enc in getattr(model, "encoders", {}).items() if getattr(enc, "frozen", False)]
        if self.unfreeze_epoch is not None and frozen:
            model.unfreeze_encoders(frozen)  # DDP registers the parameters that require grad when it wraps
        if getattr(getattr(train_loader, "dataset", None), "shards_by_process", False):
            # A stream that deals its shards to the processes itself (multimodal.data.streaming): not re-split.
            self.model, self.optimizer = accelerator.prepare(model, optimizer)
            train_loader.device, self.train_loader = accelerator.device, train_loader
        else:
            self.model, self.optimizer, self.train_loader = accelerator.prepare(model, optimizer, train_loader)
        if self.unfreeze_epoch is not None and frozen:
            self.unwrapped_model.freeze_encoders(frozen)
        self.eval_loader = accelerator.prepare(eval_loader) if eval_loader is not None else None

    # ----------------------------------------------------------------------------------------
    @property
    def unwrapped_model(self) -> nn.Module:
        """The model without DDP/compile wrappers."""
        return self.accelerator.unwrap_model(self.model)

    def _maybe_unfreeze(self, epoch: int) -> None:
        if self.unfreeze_epoch is None or self.state.unfrozen or epoch < self.unfreeze_epoch:
            return
        self.unwrapped_model.unfreeze_encoders()
        self.state.unfrozen = True
        self.accelerator.print(f"epoch {epoch + 1}: encoders unfrozen")

    # -- checkpoints -------------------------------------------------------------------------
    def _checkpoint_root(self) -> str:
        return os.path.join(self.output_dir, "checkpoints")

    def _check_weights(self, what: str) -> None:
        ema = self.ema.module if self.ema is not None else None
        check_finite(self.accelerator, training_tensors(self.unwrapped_model, self.optimizer, ema), what)

    def save_checkpoint(self, name: str) -> str:
        """`accelerator.save_state`, the EMA weights and trainer_state.json into output_dir/checkpoints/<name>,
        after checking that nothing it would write is NaN/inf."""
        path = os.path.join(self._checkpoint_root(), name)
        self._check_weights(f"checkpoint {path} (optimizer step {self.state.global_step})")
        writers = [self.ema.save] if self.ema is not None else []  # before the state file that marks it complete
        save_checkpoint(self.accelerator, path, {"trainer": dict(self.state.__dict__)},
                        keep=self.config.keep_checkpoints, writers=writers)
        keep = self.config.keep_checkpoints
        self.accelerator.print(f"checkpoint {name}: {folder_mib(path):.1f} MiB (weights, optimizer, scheduler, RNG: "
                               f"what train.resume_from needs; {'all' if keep is None else f'the newest {keep}'} kept)")
        return path

    def latest_checkpoint(self) -> Optional[str]:
        """Newest usable checkpoint directory under output_dir/checkpoints, if any."""
        return resolve_latest(self._checkpoint_root())[0]

    def load_checkpoint(self, path: str) -> None:
        """Restore model, optimizer, scheduler, RNG and trainer state from a checkpoint directory ("latest": the
        newest one that is complete and intact; the newer ones skipped are named with the reason)."""
        path, saved = resume_target(path, self._checkpoint_root(), self.accelerator.print, self.accelerator.num_processes)
        self.state = TrainerState(**saved["trainer"])
        if self.state.unfrozen:
            self.state.unfrozen = False
            self._maybe_unfreeze(self.unfreeze_epoch)
        self.accelerator.load_state(path)
        if self.ema is not None:
            self.ema.load(path)
        self.accelerator.print(
            f"resumed from {path}: epoch {self.state.epoch}, batch {self.state.batch_in_epoch}, "
            f"step {self.state.global_step}"
        )

    # -- evaluation --------------------------------------------------------------------------
    def _forward(self, batch: dict) -> Any:
        return forward_batch(self.model, batch)

    def predict(self, loader: Any) -> dict[str, torch.Tensor]:
        """Gathered outputs over a prepared loader (see `multimodal.training.predict`)."""
        return predict(self.model, loader, self.accelerator, batch_loss=self.eval_batch_loss)

    def evaluate(self, loader: Any = None) -> dict[str, float]:
        """Metrics on a prepared loader (the validation loader by default); ``num_examples`` counts each example once.

        With an EMA, the weights that are selected and saved (``train.ema_save``) give the metrics; the other
        weights' metrics follow as ``raw.<name>`` (or ``ema.<name>``)."""
        loader = loader if loader is not None else self.eval_loader
        if loader is None:
            return {}
        if self.ema is None:
            return self._evaluate(self.model, loader)
        ema, raw = self._evaluate(self.ema.module, loader), self._evaluate(self.model, loader)
        chosen, other, tag = (ema, raw, "raw") if getattr(self.config, "ema_save", True) else (raw, ema, "ema")
        return {**chosen, **{f"{tag}.{k}": v for k, v in other.items() if isinstance(v, (int, float))}}

    def _evaluate(self, model: nn.Module, loader: Any) -> dict[str, float]:
        return evaluation_metrics(model, loader, self.accelerator, self.compute_metrics_fn, self.eval_batch_loss)

    # -- training ----------------------------------------------------------------------------
    def _check_finite(self, first_bad: torch.Tensor) -> None:
        check_finite_loss(self.accelerator, first_bad, self.state.epoch + 1)

    def save_model(self, directory: str) -> None:
        """`save_pretrained` of the unwrapped model on the main process (under FSDP, of the gathered full weights)."""
        self.accelerator.wait_for_everyone()
        self._check_weights(f"the model {directory}")
        model = self.unwrapped_model
        state = full_state_dict(model) if is_sharded(model) else None  # a collective: every rank gathers
        if self.accelerator.is_main_process:
            use_ema = self.ema is not None and getattr(self.config, "ema_save", True)
            if use_ema:
                self.ema.module.save_pretrained(directory)
            else:
                model.save_pretrained(directory, **({"state_dict": state} if state is not None else {}))
        self.accelerator.wait_for_everyone()

    def load_model_weights(self, directory: str) -> None:
        """Load a `save_pretrained` folder's weights into the (possibly sharded) model, on every process."""
        load_saved_weights(self.unwrapped_model, directory)

    # -- the loop ----------------------------------------------------------------------------
    def train(self) -> TrainerState:
        """Run (or resume) training; returns the final `TrainerState` (history holds per-epoch metrics)."""
        cfg, acc = self.config, self.accelerator
        if cfg.resume_from:
            self.load_checkpoint(cfg.resume_from)
            if self.state.stopped_early:
                acc.print(f"{cfg.resume_from}: that run had already stopped early; nothing left to train")
                return self.state
        if acc.trackers == [] and acc.log_with:
            acc.init_trackers(self.options.run_name, config=flat_config(self.options.tracker_config or {}))
        best_dir = os.path.join(self.output_dir, "model")
        acc.print(f"{acc.num_processes} process(es) on {acc.device}, mixed precision {acc.mixed_precision}")
        self.model.train()
        interrupted, start, first = False, time.time(), self.state.epoch
        for epoch in range(self.state.epoch, cfg.epochs):
            interrupted = self._fit_epoch(epoch)
            if interrupted or self._end_epoch(epoch, best_dir) or self._out_of_time(start, epoch + 1 - first):
                break
        if not interrupted and not os.path.exists(os.path.join(best_dir, "config.json")):
            self.save_model(best_dir)
        if self.state.best_epoch is not None and self.state.best_metric is not None:
            acc.print(f"kept epoch {self.state.best_epoch} (validation {self.metric_for_best}={self.state.best_metric:.4f})")
        acc.wait_for_everyone()
        return self.state

    def _out_of_time(self, start: float, epochs: int) -> bool:
        """Whether ``train.time_budget_s`` leaves no room for another epoch as long as the mean one so far
        (the slowest process decides); then the run stops here and says so."""
        budget = getattr(self.config, "time_budget_s", None)
        if budget is None or self.state.epoch >= self.config.epochs:
            return False
        elapsed = float(self.accelerator.gather(torch.tensor([time.time() - start])).max())
        if elapsed + elapsed / epochs <= budget:
            return False
        self.budget_stop = f"stopped after epoch {self.state.epoch}: another would pass train.time_budget_s={budget:g}"
        self.accelerator.print(self.budget_stop)
        return True

    def train_epochs(self, count: int) -> Optional[float]:
        """Run the next `count` epochs of the training loop alone (optimizer, schedule, precision, accumulation,
        clipping, adversarial steps, EMA): no evaluation, model selection, checkpoints or callbacks. Returns the
        mean training loss over them. A federated client runs its local epochs of a round with it."""
        self.model.train()
        losses = []
        for epoch in range(self.state.epoch, min(self.state.epoch + count, self.config.epochs)):
            if self._fit_epoch(epoch):
                break
            self.state.epoch, self.state.batch_in_epoch = epoch + 1, 0
            if self._epoch_loss is not None:
                losses.append(self._epoch_loss)
        return sum(losses) / len(losses) if losses else None

    def _fit_epoch(self, epoch: int) -> bool:
        """The training part of one epoch (continuing a mid-epoch resume); True if `stop_after_steps` ended it."""
        self._maybe_unfreeze(epoch)
        self.train_loader.set_epoch(epoch)
        generator = getattr(self.train_loader, "generator", None)
        if generator is not None:
            generator.manual_seed(epoch_seed(self.config.seed, epoch))
        loader, skip = self.train_loader, self.state.batch_in_epoch
        if skip:  # a stream skips its records without decoding them
            loader = (loader.continue_epoch(epoch, skip) if hasattr(loader, "continue_epoch")
                      else self.accelerator.skip_first_batches(loader, skip))
        return self._train_epoch(epoch, loader, skip)

    def _end_epoch(self, epoch: int, best_dir: str) -> bool:
        """Evaluate, keep the best model, checkpoint and call back after an epoch; True when training stops early."""
        cfg, acc = self.config, self.accelerator
        metrics = self.evaluate() if self.eval_loader is not None else {}
        record = {"epoch": epoch + 1, "step": self.state.global_step, **metrics}
        if self._epoch_loss is not None:
            record["train_loss"] = self._epoch_loss
        self.state.history.append(record)
        acc.log({f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step=self.state.global_step)
        improved = self._select(epoch, metrics, best_dir)
        acc.print(f"epoch {epoch + 1}/{cfg.epochs}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                                                               if isinstance(v, float)) + (" (best)" if improved else ""))
        warning = saturation_warning(metrics, self.metric_for_best, self.metric_mode) if metrics else None
        if warning and not self._saturation_warned:
            acc.print(f"warning: {warning}")
            self._saturation_warned = True
        self.state.epoch, self.state.batch_in_epoch = epoch + 1, 0
        patience = cfg.early_stopping_patience
        if patience is not None and self.state.bad_epochs >= patience:
            self.state.stopped_early = True
        if cfg.save_checkpoints:
            self.save_checkpoint(f"epoch-{epoch + 1:03d}")
        for callback in self.callbacks:
            callback(self, record)
        if self.state.stopped_early:
            acc.print(f"early stopping: no improvement in {self.metric_for_best} for {patience} epochs")
        return self.state.stopped_early

    def _select(self, epoch: int, metrics: dict[str, Any], best_dir: str) -> bool:
        """Whether this epoch's model is the best so far (then saved to `best_dir`); with no metrics, every one is."""
        value = metrics.get(self.metric_for_best) if metrics else None
        if metrics and value is None:
            raise ConfigError(f"train.metric_for_best={self.metric_for_best!r} is not among the eval metrics {sorted(metrics)}")
        kept = next((h for h in self.state.history if h["epoch"] == self.state.best_epoch), {})
        if metrics and not improves(value, self.state.best_metric, self.metric_mode, loss=metrics.get("loss"),
                                    best_loss=kept.get("loss")):
            self.state.bad_epochs += 1
            return False
        self.state.best_metric, self.state.best_epoch, self.state.bad_epochs = value, epoch + 1, 0
        self.save_model(best_dir)
        return True

    def _train_epoch(self, epoch: int, loader: Any, skip: int) -> bool:
        """The optimizer steps of one epoch; returns True if `stop_after_steps` interrupted it."""
        acc = self.accelerator
        losses = EpochLosses(acc.device, self.state.global_step)
        bar = None
        if self.config.progress_bar and acc.is_local_main_process:
            bar = progress_bar(total=len(self.train_loader), initial=skip, desc=f"epoch {epoch + 1}")
        start = time.time()
        params = list(self.model.parameters())
        for batch in loader:
            self._train_step(batch, losses, params)
            self.state.batch_in_epoch += 1
            if bar is not None:
                bar.update(1)
            if acc.sync_gradients and self._after_update(epoch, losses, bar):
                if bar is not None:
                    bar.close()
                return True
        self._check_finite(losses.first_bad)
        if bar is not None:
            bar.close()
        self._epoch_loss = losses.epoch_mean(acc)
        acc.print(f"epoch {epoch + 1}: {len(self.train_loader) - skip} batches in {time.time() - start:.1f}s")
        return False

    def _train_step(self, batch: dict, losses: EpochLosses, params: list[nn.Parameter]) -> None:
        """Forward and backward one batch; on a synchronising batch also clip, step the optimizer and the schedule."""
        acc = self.accelerator
        with acc.accumulate(self.model):
            if self.gradient_cache is not None:  # forward and backward chunk by chunk (train.gradient_cache)
                losses.add(self.gradient_cache.step(self.model, batch, self.loss_fn))
            else:
                if self.adversary is not None:
                    out = self.adversary.training_output(self.model, self.unwrapped_model, batch)
                else:
                    out = self._forward(batch)
                loss = out.loss if self.loss_fn is None else self.loss_fn(batch, out)
                if loss is None:
                    raise ValueError("the model returned no loss: does the batch carry labels for this task?")
                losses.add(loss)
                acc.backward(loss)
            if acc.sync_gradients and self.config.max_grad_norm:
                acc.clip_grad_norm_(params, self.config.max_grad_norm)
            self.optimizer.step()
            if acc.sync_gradients:
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)

    def _after_update(self, epoch: int, losses: EpochLosses, bar: Any) -> bool:
        """Bookkeeping after an optimizer step (EMA, the log line, step checkpoints); True once
        ``train.stop_after_steps`` is reached."""
        cfg, acc = self.config, self.accelerator
        losses.step += 1
        self.state.global_step += 1
        step = self.state.global_step
        if self.ema is not None:
            self.ema.update(self.unwrapped_model, step)
        end_of_epoch = self.state.batch_in_epoch >= len(self.train_loader)
        if step % max(1, cfg.log_every) == 0 or end_of_epoch:
            self._check_finite(losses.first_bad)
            mean_loss, lr = losses.window_mean(acc), self.scheduler.get_last_lr()[-1]
            fraction = self.state.batch_in_epoch / len(self.train_loader)
            self.state.train_log.append({"step": step, "epoch": epoch + fraction, "loss": mean_loss, "lr": lr})
            acc.log({"train/loss": mean_loss, "train/lr": lr}, step=step)
            if bar is not None:
                bar.set_postfix(loss=f"{mean_loss:.4f}")
        stopping = cfg.stop_after_steps is not None and step >= cfg.stop_after_steps
        periodic = cfg.save_every_steps and step % cfg.save_every_steps == 0 and not end_of_epoch
        if cfg.save_checkpoints and (stopping or periodic):
            self._check_finite(losses.first_bad)  # a NaN loss since the last logging step stops before the save
            self.save_checkpoint(f"step-{step:07d}")
        if stopping:
            self._check_finite(losses.first_bad)
            acc.print(f"stopping after {step} optimizer steps (train.stop_after_steps)")
        return stopping

    def end(self) -> None:
        """Close trackers (not `end_training`, which would also tear down the process group that later
        runs in the same launch, e.g. baselines, still need)."""
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.accelerator.trackers = []
