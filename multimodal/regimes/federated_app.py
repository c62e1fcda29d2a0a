"""The Flower components `multimodal-federate` runs: a ClientApp (local training on the node's own manifest)
and a ServerApp (FedAvg / FedProx over the exchanged tensors, the aggregate evaluated every round).

Clients reply with the exchanged tensors (`multimodal.regimes.federated.exchanged_names`) and their example
count, never with samples; they train with `local_train` (the `Trainer`'s loop). Client and server build the
model the same way as a centralised run (`prepare_model`: unlocked blocks, LoRA adapters), so the same tensors
are trainable on both. Loaded by ``flwr-serverapp`` / ``flwr-clientapp`` processes; see
`multimodal.regimes.federated`.
"""

from __future__ import annotations

import os
from typing import Any

from accelerate import Accelerator
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedProx

from multimodal.config.loading import load_config
from multimodal.data.manifest import read_manifest
from multimodal.data.splits import DataSplits
from multimodal.files import write_json
from multimodal.regimes.federated import check_federated, exchanged_names, get_arrays, local_train, set_arrays
from multimodal.registry import get_task
from multimodal.tasks.runner import build_loaders
from multimodal.training.methods import prepare_model
from multimodal.training.predict import predict

client = ClientApp()
server = ServerApp()
_CLIENT: dict[str, Any] = {}  # a ClientApp process may serve several rounds: build the model once


def _client_state(config: str, data: str) -> dict[str, Any]:
    key = f"{config}|{data}"
    if key not in _CLIENT:
        cfg = load_config(config, [f"data.train={data}", "data.demo=null", "data.hf_dataset=null", "data.validation=null",
                                   "data.test=null", "data.split_column=null", "data.val_fraction=0",
                                   "data.test_fraction=0", "data.max_train_samples=null"])
        check_federated(cfg)
        task = get_task(cfg.model.task)(cfg)
        splits = task.build_splits(progress=False)
        model = prepare_model(task.build_model(splits), cfg, task.label_type)
        loader = build_loaders(task, model, splits, progress=False)["train"]
        _CLIENT.clear()
        _CLIENT[key] = {"cfg": cfg, "model": model, "names": exchanged_names(model), "loader": loader,
                        "n": len(splits.train)}
    return _CLIENT[key]


@client.train()
def train(msg: Message, context: Context) -> Message:
    """Local epochs on this node's manifest, starting from the server's tensors; reply tensors + counts."""
    state = _client_state(str(context.run_config["config"]), str(context.node_config["data"]))
    model, names, cfg = state["model"], state["names"], state["cfg"]
    set_arrays(model, names, msg.content["arrays"].to_numpy_ndarrays())
    settings = msg.content["config"] if "config" in msg.content else {}
    round_ = int(settings["server-round"])
    stats = local_train(model, state["loader"], cfg.train, int(context.run_config["local-epochs"]),
                        float(settings.get("proximal-mu", 0.0)), seed=cfg.train.seed + round_, server_round=round_,
                        rounds=int(context.run_config["num-rounds"]))
    reply = RecordDict({"arrays": ArrayRecord(get_arrays(model, names)),
                        "metrics": MetricRecord({"num-examples": state["n"], **stats})})
    return Message(content=reply, reply_to=msg)


def _server_parts(rc: Any) -> tuple[Any, Any, Any, dict[str, Any]]:
    cfg = load_config(str(rc["config"]), ["data.demo=null", "data.hf_dataset=null"])
    task = get_task(cfg.model.task)(cfg)
    labels = cfg.data.labels
    datasets = {}
    for name in ("validation", "test"):
        path = str(rc[name])
        if path:
            datasets[name] = task.dataset_from_rows(read_manifest(path), os.path.dirname(path), path, labels,
                                                    progress=False)
    validation = datasets["validation"]
    splits = DataSplits(validation, validation, datasets.get("test"), validation.vocab)
    model = prepare_model(task.build_model(splits), cfg, task.label_type)
    return cfg, task, model, {"splits": splits, "loaders": build_loaders(task, model, splits, progress=False)}


@server.main()
def main(grid: Grid, context: Context) -> None:
    """Rounds of FedAvg / FedProx; the aggregate is scored on the validation split each round."""
    rc = context.run_config
    cfg, task, model, parts = _server_parts(rc)
    names = exchanged_names(model)
    accelerator = Accelerator(cpu=True)
    loaders = {k: accelerator.prepare(v) for k, v in parts["loaders"].items() if k != "train" and v is not None}
    history: list[dict] = []

    def score(split: str) -> dict[str, float]:
        preds = predict(model, loaders[split], accelerator, batch_loss=task.batch_loss)
        metrics = task.evaluate(preds, getattr(parts["splits"], split), model, full=False).metrics
        return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        set_arrays(model, names, arrays.to_numpy_ndarrays())
        metrics = score("validation")
        history.append({"round": server_round, **metrics})
        return MetricRecord(metrics)

    clients = int(rc["clients"])
    common = {"fraction_train": 1.0, "fraction_evaluate": 0.0, "min_train_nodes": clients,
              "min_available_nodes": clients}
    strategy = (FedProx(proximal_mu=float(rc["proximal-mu"]), **common) if rc["strategy"] == "fedprox"
                else FedAvg(**common))
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(get_arrays(model, names)),
                            num_rounds=int(rc["num-rounds"]), timeout=float(os.environ.get("MULTIMODAL_ROUND_TIMEOUT", 900)),
                            train_config=ConfigRecord({"local-epochs": int(rc["local-epochs"])}), evaluate_fn=evaluate)
    set_arrays(model, names, result.arrays.to_numpy_ndarrays())
    output = str(rc["output"])
    model.save_pretrained(os.path.join(output, "model"))
    total = sum(p.numel() for p in model.parameters())
    sent = sum(model.state_dict()[n].numel() for n in names)
    write_json(os.path.join(output, "rounds.json"), {
        "strategy": str(rc["strategy"]), "clients": clients, "local_epochs": int(rc["local-epochs"]),
        "initial": history[0] if history and history[0]["round"] == 0 else None,
        "rounds": [h for h in history if h["round"] >= 1],
        "test": score("test") if "test" in loaders else None,
        "exchanged_names": names, "exchanged_values": sent, "model_values": total,
    })
