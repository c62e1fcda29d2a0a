"""Federated fine-tuning on Flower: partitions, what clients exchange, local training, and the launcher.

``multimodal-federate --config my.yaml --clients N --rounds R --partition iid|label_skew|by_column:COL``

1. The training rows are split into N client partitions (`partition_rows`), each written to its own manifest
   (``<output>/clients/client-<i>.csv``); validation/test go to the server's manifests. A client only ever
   reads its own manifest: no raw sample leaves it.
2. A real Flower deployment starts on localhost: one ``flower-superlink`` and N ``flower-supernode`` processes
   (each told its manifest through ``--node-config``), and ``flwr run`` submits the app in
   ``multimodal/regimes/flower_app/`` (`multimodal.regimes.flower_deployment`; components in
   `multimodal.regimes.federated_app`).
3. Each round the server sends the *exchanged* tensors (`exchanged_names`: trainable parameters, i.e. heads,
   unlocked blocks and adapters, plus the buffers of trainable modules; frozen towers never travel), clients
   train locally (`local_train`, FedProx's proximal term when ``--strategy fedprox``), return tensors and
   example counts, and Flower's FedAvg / FedProx aggregates them. The server evaluates the aggregate on the
   validation split every round.

Clients train through the `Trainer`'s own loop (`Trainer.train_epochs`): its parameter groups (encoder / head
LRs, layer decay), the LR schedule (spanning every round's local epochs, so round r continues where round r - 1
ended), mixed precision, gradient accumulation, clipping and adversarial steps. What a client cannot honour
(`CLIENT_REFUSED`: checkpoint resume, early stopping, EMA, the linear probe, LP-FT, WiSE-FT, distillation, a
later unfreeze) is refused when the config is loaded (`check_federated`), never silently dropped.
4. The same config is trained centrally for comparison; ``federated.json`` / ``federated.md`` list both
   accuracies per round and the first round reaching 95% of the centralised accuracy.
"""

from __future__ import annotations

import argparse
import copy
import os
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch
from torch import nn

from multimodal.config.loading import load_config, save_config
from multimodal.config.schema import ConfigError, ExperimentConfig, TrainConfig
from multimodal.data.dataset import DataError
from multimodal.data.manifest import cell, is_missing
from multimodal.data.media import FILE_MODALITIES, cell_path
from multimodal.errors import DEBUG_HELP, user_errors
from multimodal.files import write_json, write_text
from multimodal.regimes.flower_deployment import run_federation
from multimodal.registry import get_task
from multimodal.tasks.runner import run
from multimodal.training.trainer import Trainer, TrainerOptions

PARTITIONS = ("iid", "label_skew", "by_column:COL")


# -- partitions ---------------------------------------------------------------------------------------
def partition_rows(n_rows: int, clients: int, scheme: str, labels: Optional[list] = None,
                   column: Optional[list] = None, seed: int = 0, alpha: float = 0.5) -> list[list[int]]:
    """Row positions of each client: ``iid`` (random equal parts), ``label_skew`` (per-class Dirichlet(alpha)
    shares, so clients see different label mixes) or ``by_column:COL`` (rows sharing COL's value together)."""
    if clients < 1 or n_rows < clients:
        raise DataError(f"cannot split {n_rows} training rows over {clients} clients")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        return [sorted(p.tolist()) for p in np.array_split(rng.permutation(n_rows), clients)]
    if scheme == "label_skew":
        if labels is None:
            raise DataError("--partition label_skew needs labels (the task has none)")
        parts: list[list[int]] = [[] for _ in range(clients)]
        for value in sorted({str(v) for v in labels}):
            rows = rng.permutation([i for i, v in enumerate(labels) if str(v) == value])
            cuts = (np.cumsum(rng.dirichlet([alpha] * clients)) * len(rows)).astype(int)[:-1]
            for client, chunk in enumerate(np.split(rows, cuts)):
                parts[client].extend(chunk.tolist())
        for client in range(clients):  # every client keeps at least one row
            if not parts[client]:
                donor = max(range(clients), key=lambda c: len(parts[c]))
                parts[client].append(parts[donor].pop())
        return [sorted(p) for p in parts]
    if scheme.startswith("by_column:"):
        keys = [str(v) for v in column] if column is not None else None
        if keys is None:
            raise DataError(f"--partition {scheme}: column not found")
        values = list(dict.fromkeys(keys))
        if len(values) < clients:
            raise DataError(f"--partition {scheme}: {len(values)} distinct values for {clients} clients")
        owner = {v: k % clients for k, v in enumerate(rng.permutation(values).tolist())}
        return [[i for i, k in enumerate(keys) if owner[k] == c] for c in range(clients)]
    raise DataError(f"--partition {scheme!r}: choose one of {', '.join(PARTITIONS)}")


def write_rows(dataset: Any, positions: list[int], path: str) -> str:
    """The rows of `dataset` at `positions` as a CSV manifest with absolute file paths."""
    rows = []
    for i in positions:
        row = dict(dataset.row(i))
        for m, c in dataset.columns.items():
            value = cell(row.get(c))
            if m in FILE_MODALITIES and not is_missing(value):
                row[c] = cell_path(value, dataset.base_dir)
        rows.append(row)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


# -- what travels -------------------------------------------------------------------------------------
def exchanged_names(model: nn.Module) -> list[str]:
    """State-dict names clients and server exchange: trainable parameters (heads, unlocked blocks, adapters)
    and the floating-point buffers of modules that have trainable parameters (e.g. their BatchNorm stats)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    for prefix, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            for n, b in module.named_buffers(recurse=False):
                if b.is_floating_point():
                    names.add(f"{prefix}.{n}" if prefix else n)
    if not names:
        raise ConfigError("federated training needs trainable parameters; every parameter is frozen")
    return sorted(names)


def get_arrays(model: nn.Module, names: list[str]) -> list[np.ndarray]:
    """The exchanged tensors as numpy arrays, in `names` order."""
    state = model.state_dict()
    return [state[n].detach().cpu().numpy().copy() for n in names]


def set_arrays(model: nn.Module, names: list[str], arrays: list[np.ndarray]) -> None:
    """Write exchanged arrays back into the model (shapes checked)."""
    if len(arrays) != len(names):
        raise ValueError(f"got {len(arrays)} arrays for {len(names)} exchanged tensors")
    state = model.state_dict()
    for name, array in zip(names, arrays):
        if tuple(state[name].shape) != tuple(array.shape):
            raise ValueError(f"{name}: shape {tuple(array.shape)} does not match {tuple(state[name].shape)}")
        state[name].copy_(torch.from_numpy(np.asarray(array)))


# -- local training -----------------------------------------------------------------------------------
# Options a client cannot honour, refused when the config is loaded (dotted key -> why).
CLIENT_REFUSED = {
    "train.resume_from": "a federation does not resume from a training checkpoint",
    "train.stop_after_steps": "the server runs whole rounds",
    "train.save_every_steps": "clients write no checkpoints",
    "train.early_stopping_patience": "clients do not evaluate; the server runs --rounds rounds",
    "train.ema_decay": "the server aggregates the clients' trained weights, not an average of them",
    "train.linear_probe": "the probe is solved on one dataset, not trained in rounds",
    "train.probe_init": "LP-FT's probe is solved on one dataset",
    "train.refit_full": "there is no validation split on the clients to refit on",
    "train.wise_ft_alphas": "WiSE-FT picks alpha on validation, which only the server has",
    "train.distill": "the teacher's outputs are not computed on the clients",
    "model.unfreeze_after_epochs": "the exchanged tensors are fixed when the federation starts",
}


def check_federated(cfg: ExperimentConfig) -> None:
    """Refuse options that federated clients would silently ignore (`CLIENT_REFUSED`), with one `ConfigError`."""
    found = []
    for key, why in CLIENT_REFUSED.items():
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) not in (None, False):
            found.append(f"{key} ({why})")
    if found:
        raise ConfigError("federated training cannot apply " + "; ".join(found) + ". Unset them (null/false) for "
                          "multimodal-federate")


def client_train_config(train: TrainConfig, local_epochs: int, rounds: int, seed: int) -> TrainConfig:
    """A client's copy of the train config: the schedule spans all rounds' local epochs, and the client saves,
    logs and shows nothing of its own."""
    tcfg = copy.deepcopy(train)
    tcfg.epochs, tcfg.seed = local_epochs * rounds, seed
    tcfg.save_checkpoints, tcfg.log_with, tcfg.progress_bar = False, "none", False
    return tcfg


class ProximalLoss:
    """FedProx's training loss: the model's own plus ``mu/2 * ||w - w_global||^2`` over its trainable tensors,
    ``w_global`` being the weights it holds when this is made (the server's, at the start of a round)."""

    def __init__(self, model: nn.Module, mu: float) -> None:
        self.model, self.mu = model, float(mu)
        self.start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def __call__(self, batch: dict, output: Any) -> torch.Tensor:
        drift = sum(((p - self.start[n]) ** 2).sum() for n, p in self.model.named_parameters() if n in self.start)
        return output.loss + self.mu / 2 * drift


def local_train(model: nn.Module, loader: Any, cfg: TrainConfig, epochs: int, proximal_mu: float = 0.0,
                seed: int = 0, server_round: int = 1, rounds: int = 1) -> dict[str, float]:
    """One client's `epochs` local epochs of round `server_round` (of `rounds`), through the `Trainer`'s loop
    (optimizer groups, schedule, precision, accumulation, clipping); with `proximal_mu`, FedProx's proximal term.
    Returns the mean training loss and the learning rate (the head's) the round ended at."""
    if not 1 <= server_round <= rounds:
        raise ValueError(f"round {server_round} is outside 1..{rounds}")
    tcfg = client_train_config(cfg, epochs, rounds, seed)
    trainer = Trainer(model, tcfg, loader, options=TrainerOptions(start_epoch=(server_round - 1) * epochs))
    if proximal_mu > 0:
        trainer.loss_fn = ProximalLoss(trainer.unwrapped_model, proximal_mu)  # after prepare: on the model's device
    loss = trainer.train_epochs(epochs)
    trainer.end()
    return {"train_loss": float("nan") if loss is None else loss, "lr": float(trainer.scheduler.get_last_lr()[-1])}


def rounds_to_fraction(federated: list[float], centralized: float, fraction: float = 0.95) -> Optional[int]:
    """First round (1-based) whose federated score reaches `fraction` of the centralised one (None: never)."""
    for r, value in enumerate(federated, start=1):
        if value is not None and value >= fraction * centralized:
            return r
    return None


# -- the federation -----------------------------------------------------------------------------------
def prepare(config: str, overrides: list[str], clients: int, partition: str, output: str) -> dict[str, Any]:
    """Resolve the config, split the training rows over the clients and write every manifest under `output`."""

    cfg = load_config(config, overrides)
    check_federated(cfg)
    task = get_task(cfg.model.task)(cfg)
    if task.label_type is None and partition == "label_skew":
        raise DataError("--partition label_skew needs a labelled task")
    splits = task.build_splits(progress=False)
    train = splits.train
    labels = [cell(train.row(i).get(train.label_column)) for i in range(len(train))] if train.has_labels else None
    column = None
    if partition.startswith("by_column:"):
        name = partition.split(":", 1)[1]
        if not name or name not in train.row(0):
            raise DataError(f"--partition {partition}: column {name!r} not in the training rows ({sorted(train.row(0))})")
        column = [cell(train.row(i).get(name)) for i in range(len(train))]
    parts = partition_rows(len(train), clients, partition, labels, column, seed=cfg.data.split_seed)
    os.makedirs(output, exist_ok=True)
    manifests = [write_rows(train, p, os.path.join(output, "clients", f"client-{i}.csv")) for i, p in enumerate(parts)]
    evaluation = {name: write_rows(ds, list(range(len(ds))), os.path.join(output, "server", f"{name}.csv"))
                  for name, ds in (("validation", splits.validation), ("test", splits.test)) if ds is not None}
    if "validation" not in evaluation:
        raise DataError("federated training evaluates on a validation split every round; the data has none")
    resolved = os.path.join(output, "config.yaml")
    if splits.vocab is not None:
        cfg.data.labels = list(splits.vocab.names)  # every client and the server use the same output order
    save_config(cfg, resolved)
    return {"config": resolved, "clients": manifests, "sizes": [len(p) for p in parts], "evaluation": evaluation,
            "labels": splits.vocab.names if splits.vocab is not None else None, "cfg": cfg}


def report(federated: dict[str, Any], centralized: Optional[dict[str, Any]], metric: str, output: str) -> dict:
    """``federated.json`` and ``federated.md``: the federated metric per round next to the centralised run."""
    scores = [r.get(metric) for r in federated["rounds"]]
    history = centralized.get("history", []) if centralized else []
    epochs_per_round = federated.get("local_epochs", 1)
    rows = []
    for r, value in enumerate(scores, start=1):
        match = [h.get(metric) for h in history if h["epoch"] == r * epochs_per_round]
        rows.append({"round": r, f"federated_{metric}": value, f"centralized_{metric}": match[0] if match else None})
    best_central = max((h.get(metric) for h in history if h.get(metric) is not None), default=None)
    result = {**federated, "metric": metric, "per_round": rows, "centralized_best": best_central,
              "rounds_to_95pct": rounds_to_fraction(scores, best_central) if best_central else None}
    write_json(os.path.join(output, "federated.json"), result)
    lines = [f"# Federated ({federated['strategy']}, {federated['clients']} clients, partition {federated.get('partition')})",
             "", f"| round | federated {metric} | centralized {metric} (same epochs) |", "|---|---|---|"]
    lines += [f"| {r['round']} | {_fmt(r[f'federated_{metric}'])} | {_fmt(r[f'centralized_{metric}'])} |" for r in rows]
    lines += ["", f"Best centralised {metric}: {_fmt(best_central)}; first round at 95% of it: "
              f"{result['rounds_to_95pct'] or 'not reached'}."]
    write_text(os.path.join(output, "federated.md"), "\n".join(lines) + "\n")
    return result


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else "–"


def main(argv: Optional[list[str]] = None) -> int:
    """``multimodal-federate``: federated fine-tuning on Flower (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Federated fine-tuning on Flower (SuperLink + SuperNodes on localhost).")
    parser.add_argument("--config", required=True)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--partition", default="iid", help="iid | label_skew | by_column:COL")
    parser.add_argument("--strategy", default="fedavg", choices=["fedavg", "fedprox"])
    parser.add_argument("--proximal-mu", type=float, default=0.01, help="FedProx's mu (fedprox only)")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--output", default=None, help="default: <train.output_dir>/federated")
    parser.add_argument("--no-centralized", action="store_true", help="skip the centralised comparison run")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before the whole run is stopped")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = parser.parse_args(argv)
    with user_errors(args.debug):
        if args.clients < 1 or args.rounds < 1 or args.local_epochs < 1:
            raise ConfigError("--clients, --rounds and --local-epochs must be >= 1")
        probe = load_config(args.config, args.overrides)
        output = args.output or os.path.join(probe.train.output_dir, "federated")
        plan = prepare(args.config, args.overrides, args.clients, args.partition, output)

        cfg = plan["cfg"]
        metric = "accuracy" if cfg.model.task == "single_label" else get_task(cfg.model.task)(cfg).default_metric()
        centralized = None
        if not args.no_centralized:

            cfg.train.output_dir = os.path.join(output, "centralized")
            cfg.train.epochs = args.rounds * args.local_epochs
            cfg.eval.baselines = False  # (early stopping is refused: one score per epoch lines up with the rounds)
            centralized = run(cfg)
        federated = run_federation(plan, args.rounds, args.strategy, args.proximal_mu, args.local_epochs, output,
                                   args.timeout)
        federated["partition"], federated["client_sizes"] = args.partition, plan["sizes"]
        result = report(federated, centralized, metric, output)
    print(open(os.path.join(output, "federated.md"), encoding="utf-8").read())
    print(f"outputs in {os.path.abspath(output)}")
    return 0 if result else 1


if __name__ == "__main__":
    raise SystemExit(main())
