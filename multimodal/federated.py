"""Federated fine-tuning on Flower: partitions, what clients exchange, local training, and the launcher.

``multimodal-federate --config my.yaml --clients N --rounds R --partition iid|label_skew|by_column:COL``

1. The training rows are split into N client partitions (`partition_rows`), each written to its own manifest
   (``<output>/clients/client-<i>.csv``); validation/test go to the server's manifests. A client only ever
   reads its own manifest: no raw sample leaves it.
2. A real Flower deployment starts on localhost: one ``flower-superlink`` and N ``flower-supernode`` processes
   (each told its manifest through ``--node-config``), and ``flwr run`` submits the app in
   ``multimodal/flower_app/`` (components in `multimodal.federated_app`).
3. Each round the server sends the *exchanged* tensors (`exchanged_names`: trainable parameters, i.e. heads,
   unlocked blocks and adapters, plus the buffers of trainable modules; frozen towers never travel), clients
   train locally (`local_train`, FedProx's proximal term when ``--strategy fedprox``), return tensors and
   example counts, and Flower's FedAvg / FedProx aggregates them. The server evaluates the aggregate on the
   validation split every round.
4. The same config is trained centrally for comparison; ``federated.json`` / ``federated.md`` list both
   accuracies per round and the first round reaching 95% of the centralised accuracy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from multimodal.config.loading import load_config, save_config
from multimodal.config.schema import ConfigError
from multimodal.data.dataset import DataError
from multimodal.data.manifest import cell, is_missing
from multimodal.data.media import FILE_MODALITIES, cell_path
from multimodal.registry import get_task
from multimodal.tasks.runner import run
from multimodal.training.predict import forward_batch
from multimodal.utils import to_device, write_json, write_text

APP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flower_app")
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
    import pandas as pd

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


def local_train(model: nn.Module, loader: Any, cfg: Any, epochs: int, proximal_mu: float = 0.0,
                seed: int = 0) -> dict[str, float]:
    """One client's local epochs (AdamW over the model's parameter groups, clipping as configured); with
    `proximal_mu`, FedProx's ``mu/2 * ||w - w_global||^2`` over the trainable tensors."""
    from accelerate.utils import set_seed

    set_seed(seed)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(model.parameter_groups(cfg.encoder_lr, cfg.head_lr, cfg.weight_decay), lr=cfg.head_lr)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    total, count = 0.0, 0
    for epoch in range(epochs):
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            loss = forward_batch(model, to_device(batch, "cpu")).loss
            if proximal_mu > 0:
                loss = loss + proximal_mu / 2 * sum(((p - start[n]) ** 2).sum() for n, p in model.named_parameters()
                                                    if n in start)
            loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total, count = total + float(loss.detach()), count + 1
    return {"train_loss": total / max(count, 1)}


def rounds_to_fraction(federated: list[float], centralized: float, fraction: float = 0.95) -> Optional[int]:
    """First round (1-based) whose federated score reaches `fraction` of the centralised one (None: never)."""
    for r, value in enumerate(federated, start=1):
        if value is not None and value >= fraction * centralized:
            return r
    return None


# -- the launcher -------------------------------------------------------------------------------------
def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"the SuperLink did not open port {port} within {timeout:.0f} s")


def prepare(config: str, overrides: list[str], clients: int, partition: str, output: str) -> dict[str, Any]:
    """Resolve the config, split the training rows over the clients and write every manifest under `output`."""

    cfg = load_config(config, overrides)
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


def run_federation(plan: dict[str, Any], rounds: int, strategy: str, proximal_mu: float, local_epochs: int,
                   output: str, timeout: float = 1800) -> dict[str, Any]:
    """Start a SuperLink and one SuperNode per client on localhost, run the app with ``flwr run``, stop them;
    returns the server's per-round report."""
    bin_dir = os.path.dirname(sys.executable)
    home = tempfile.mkdtemp(prefix="flwr-home-")
    serverappio, fleet, control, *clientappio = _free_ports(3 + len(plan["clients"]))
    write_text(os.path.join(home, "config.toml"),
               f'[superlink]\ndefault = "local-deployment"\n\n[superlink.local-deployment]\n'
               f'address = "127.0.0.1:{control}"\ninsecure = true\n')
    env = dict(os.environ, FLWR_HOME=home, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")  # the apps import this package
    logs = os.path.join(output, "logs")
    os.makedirs(logs, exist_ok=True)
    procs: list[subprocess.Popen] = []

    def start(name: str, cmd: list[str]) -> None:
        log = open(os.path.join(logs, f"{name}.log"), "w")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    try:
        start("superlink", [os.path.join(bin_dir, "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
                            "--serverappio-api-address", f"127.0.0.1:{serverappio}",
                            "--fleet-api-address", f"127.0.0.1:{fleet}", "--control-api-address", f"127.0.0.1:{control}"])
        _wait_for_port(control, 60)
        for i, manifest in enumerate(plan["clients"]):
            start(f"supernode-{i}", [os.path.join(bin_dir, "flower-supernode"), "--insecure", "--superlink",
                                     f"127.0.0.1:{fleet}", "--clientappio-api-address", f"127.0.0.1:{clientappio[i]}",
                                     "--node-config", f'partition-id={i} data="{manifest}"'])
        run_config = (f'config="{plan["config"]}" output="{os.path.abspath(output)}" num-rounds={rounds} '
                      f'strategy="{strategy}" proximal-mu={proximal_mu} local-epochs={local_epochs} '
                      f'clients={len(plan["clients"])} validation="{plan["evaluation"]["validation"]}" '
                      f'test="{plan["evaluation"].get("test", "")}"')
        cmd = [os.path.join(bin_dir, "flwr"), "run", APP_DIR, "local-deployment", "--run-config", run_config, "--stream"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        write_text(os.path.join(logs, "flwr-run.log"), proc.stdout + proc.stderr)
        report_path = os.path.join(output, "rounds.json")
        if proc.returncode != 0 or not os.path.exists(report_path):
            raise RuntimeError(f"the Flower run failed (exit {proc.returncode}); logs in {logs}:\n"
                               + (proc.stdout + proc.stderr)[-2000:])
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, 9)
            except ProcessLookupError:
                pass
            p.wait()
        shutil.rmtree(home, ignore_errors=True)
    import json

    with open(report_path, encoding="utf-8") as f:
        return json.load(f)


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
    args = parser.parse_args(argv)
    try:
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
            cfg.eval.baselines = False
            cfg.train.early_stopping_patience = None  # one score per epoch to line up with the rounds
            centralized = run(cfg)
        federated = run_federation(plan, args.rounds, args.strategy, args.proximal_mu, args.local_epochs, output,
                                   args.timeout)
        federated["partition"], federated["client_sizes"] = args.partition, plan["sizes"]
        result = report(federated, centralized, metric, output)
    except (ConfigError, DataError) as err:
        raise SystemExit(f"error: {err}") from None
    print(open(os.path.join(output, "federated.md"), encoding="utf-8").read())
    print(f"outputs in {os.path.abspath(output)}")
    return 0 if result else 1


if __name__ == "__main__":
    raise SystemExit(main())
