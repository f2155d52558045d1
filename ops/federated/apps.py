"""The Flower apps: a ServerApp running FedAvg over both GAN networks, and a ClientApp per site.

Message API (flwr 1.42): the server sends the global weights as one ``ArrayRecord`` (generator keys ``G.*``,
discriminator keys ``D.*``: both networks are averaged); each site trains on its own tiles only and replies with its
weights, one ``MetricRecord`` (``num-examples`` weights the average, plus losses and class shares) and a
``ConfigRecord`` naming the site. Tiles, labels and images never leave the site.

The server writes the global model and the lineage (who took part in which round, with how many samples, and how
far each site's weights were from the average) to ``out-dir``, atomically, for the asset to pick up.

Run config keys (defaults in ``flower_app/pyproject.toml``): ``gan-config`` (JSON of ``CondGanConfig``),
``num-rounds``, ``fraction-train``, ``min-sites``, ``local-epochs``, ``batch-size``, ``round-timeout``, ``seed``,
``out-dir``, ``dab-threshold``. Node config keys: ``site`` (name), ``site-root`` (folder), optional ``progress-file``.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from ops.common.file_io import atomic_torch_save
from ops.federated.networks import CondDiscriminator, CondGanConfig, CondGenerator
from ops.federated.runtime import LINEAGE_FILE, MODEL_FILE, MODEL_FORMAT
from ops.federated.sites import load_site
from ops.federated.training import LocalTraining, build, train_local


def pack(G: CondGenerator, D: CondDiscriminator) -> ArrayRecord:
    """Both networks in one record, so FedAvg averages the generator and the discriminator alike."""
    state = {f"G.{k}": v for k, v in G.state_dict().items()} | {f"D.{k}": v for k, v in D.state_dict().items()}
    return ArrayRecord({k: v.detach().cpu() for k, v in state.items()})


def unpack(arrays: ArrayRecord, G: CondGenerator, D: CondDiscriminator) -> None:
    """Load an averaged record; integer buffers (BatchNorm counters) come back as floats and are cast."""
    state = arrays.to_torch_state_dict()
    for prefix, net in (("G.", G), ("D.", D)):
        own = net.state_dict()
        net.load_state_dict({k: state[prefix + k].to(own[k].dtype).reshape(own[k].shape) for k in own})


# ----------------------------------------------------------------------------------------------------------
# ClientApp: one per site.

clientapp = ClientApp()


@clientapp.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global networks on this site's tiles for the configured local epochs."""
    site, root = str(context.node_config["site"]), str(context.node_config["site-root"])
    rc = context.run_config
    round_ = int(msg.content["config"]["server-round"])
    progress = context.node_config.get("progress-file")
    if progress:
        with open(str(progress), "a") as f:
            f.write(f"round {round_} start\n")
    cfg = CondGanConfig.from_dict(json.loads(str(rc["gan-config"])))
    data = load_site(root, cfg.resolution, float(rc["dab-threshold"]))
    torch.set_num_threads(1)
    G, D = build(cfg, 0)
    unpack(msg.content["arrays"], G, D)
    seed = int(rc["seed"]) * 1000 + round_ * 7 + zlib.crc32(site.encode()) % 1000
    run = LocalTraining(float(rc["local-epochs"]), int(rc["batch-size"]), True, seed)
    stats = train_local(G, D, data.images, data.labels, run)
    shares = data.class_shares(cfg.n_classes)
    metrics = {"num-examples": len(data.labels), **stats, **{f"share-{c}": s for c, s in enumerate(shares)}}
    content = RecordDict(
        {
            "arrays": pack(G, D),
            "metrics": MetricRecord(metrics),
            "site": ConfigRecord({"site": site, "slides": ";".join(data.slides)}),
        }
    )
    if progress:
        with open(str(progress), "a") as f:
            f.write(f"round {round_} done\n")
    return Message(content=content, reply_to=msg)


# ----------------------------------------------------------------------------------------------------------
# ServerApp: FedAvg weighted by sample count, recording who took part.


def _flat(arrays: ArrayRecord) -> np.ndarray:
    return np.concatenate([np.asarray(a.numpy(), np.float64).ravel() for a in arrays.values()])


class LineageFedAvg(FedAvg):
    """FedAvg that also records, per round, the sampled nodes, the sites that replied and their metrics."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rounds: list[dict] = []

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.rounds.append(
            {"round": server_round, "sampled": len(messages), "started": time.time(), "sites": [], "failed": []}
        )
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)
        record = self.rounds[-1]
        global_flat = _flat(arrays) if arrays is not None else None
        for msg in replies:
            if msg.has_error():
                record["failed"].append({"node": int(msg.metadata.src_node_id), "reason": str(msg.error.reason)})
                continue
            site = msg.content["site"]
            local = _flat(msg.content["arrays"])
            record["sites"].append(
                {
                    "site": str(site["site"]),
                    "slides": str(site["slides"]),
                    "node": int(msg.metadata.src_node_id),
                    "metrics": {k: float(v) for k, v in msg.content["metrics"].items()},
                    "distance_to_global": float(np.linalg.norm(local - global_flat)) if global_flat is not None else 0,
                }
            )
        record["missing"] = record["sampled"] - len(record["sites"]) - len(record["failed"])
        record["seconds"] = time.time() - record.pop("started")
        record["aggregated"] = {k: float(v) for k, v in (metrics or {}).items()}
        return arrays, metrics


serverapp = ServerApp()


@serverapp.main()
def main(grid: Grid, context: Context) -> None:
    """Run FedAvg for ``num-rounds`` rounds and write the global model and lineage to ``out-dir``."""
    rc = context.run_config
    out = Path(str(rc["out-dir"]))
    cfg = CondGanConfig.from_dict(json.loads(str(rc["gan-config"])))
    G, D = build(cfg, int(rc["seed"]))
    min_sites = int(rc["min-sites"])
    strategy = LineageFedAvg(
        fraction_train=float(rc["fraction-train"]),
        fraction_evaluate=0.0,
        min_train_nodes=min_sites,
        min_available_nodes=min_sites,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=pack(G, D),
        num_rounds=int(rc["num-rounds"]),
        timeout=float(rc["round-timeout"]),
        train_config=ConfigRecord({"local-epochs": float(rc["local-epochs"])}),
    )
    if result.arrays is None or not any(r["sites"] for r in strategy.rounds):
        raise RuntimeError(f"no site replied in any round: {strategy.rounds}")
    unpack(result.arrays, G, D)
    out.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(
        {"format": MODEL_FORMAT, "config": cfg.to_dict(), "G": G.state_dict(), "D": D.state_dict()}, out / MODEL_FILE
    )
    lineage = {"run_id": int(context.run_id), "rounds": strategy.rounds, "config": cfg.to_dict()}
    tmp = out / f".{LINEAGE_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(lineage, indent=1))
    os.replace(tmp, out / LINEAGE_FILE)  # written last: its presence means the run finished
