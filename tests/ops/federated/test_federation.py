"""Flower's deployment runtime on loopback: real SuperLink and SuperNode processes, FedAvg across three sites.

Every test stops every process it started (the ``Federation`` context manager, also on failure) and checks that
the processes are gone and the SuperLink's port is free again.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from ops.federated.networks import CondDiscriminator, CondGanConfig, CondGenerator
from ops.federated.runtime import MODEL_FILE, Federation, Site, port_open

GAN = CondGanConfig(resolution=32, g_channels=32, d_channels=16)


def run_config(rounds: int, min_sites: int, round_timeout: float) -> dict:
    return {
        "gan-config": json.dumps(GAN.to_dict()),
        "num-rounds": rounds,
        "min-sites": min_sites,
        "round-timeout": round_timeout,
        "batch-size": 8,
        "local-epochs": 1.0,
    }


def all_pids(fed: Federation) -> list[int]:
    pids = []
    for p in fed.procs:
        pids.append(p.popen.pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            pids += [c.pid for c in psutil.Process(p.popen.pid).children(recursive=True)]
    return pids


def assert_all_stopped(pids: list[int], port: int) -> None:
    deadline = time.monotonic() + 15
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    while alive and time.monotonic() < deadline:
        time.sleep(0.3)
        alive = [p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"processes left running: {alive}"
    assert not port_open(port), f"port {port} still open"


def wait_for_line(path: Path, line: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and line in path.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"{path} never showed {line!r}")


@pytest.mark.timeout(420)
def test_three_sites_two_rounds_survive_a_killed_supernode(tmp_path, three_sites):
    """Round 1 has all three sites; site c's SuperNode is killed while it trains in round 2 and the run still
    finishes with a and b, the lineage saying who took part. The global model differs from every site's local
    one, and nothing on the server side tried to read a site's folder."""
    fed = Federation(tmp_path / "federation", three_sites)
    with fed:
        port = fed.port
        pids = all_pids(fed)
        out = tmp_path / "out"

        def crash_site_c() -> None:
            # Killed as soon as its round-2 ClientApp starts training, before it can begin sending a reply.
            wait_for_line(fed.workdir / "logs" / "c.progress", "round 2 start", 240)
            fed.kill("supernode-c")

        killer = threading.Thread(target=crash_site_c, daemon=True)
        killer.start()
        lineage = fed.run(run_config(rounds=2, min_sites=2, round_timeout=90.0), out, timeout=360)
        killer.join(timeout=5)
        pids += all_pids(fed)
        server_env = psutil.Process(fed.proc("superlink").popen.pid).environ()
    assert_all_stopped(pids, port)

    first, second = lineage["rounds"]
    assert sorted(s["site"] for s in first["sites"]) == ["a", "b", "c"]
    assert sorted(s["site"] for s in second["sites"]) == ["a", "b"]
    assert second["missing"] + len(second["failed"]) == 1, "site c's round-2 message is recorded as unanswered"
    examples = {s["site"]: s["metrics"]["num-examples"] for s in first["sites"]}
    assert examples == {"a": 12, "b": 10, "c": 10}
    assert all(s["distance_to_global"] > 1e-3 for r in lineage["rounds"] for s in r["sites"])

    payload = torch.load(out / MODEL_FILE, weights_only=True)
    G, D = CondGenerator(GAN), CondDiscriminator(GAN)
    G.load_state_dict(payload["G"])
    D.load_state_dict(payload["D"])
    assert str(three_sites[0].root) in server_env["HISTOFACTORY_DENY_PATHS"]
    assert not fed.deny_log.exists(), f"the server side tried to read site data: {fed.deny_log.read_text()}"


@pytest.mark.timeout(240)
def test_unregistered_supernode_is_refused(tmp_path, three_sites):
    a, rogue = three_sites[0], Site("rogue", three_sites[1].root)
    fed = Federation(tmp_path / "federation", [a], auth=True)
    with fed:
        port = fed.port
        assert fed.online_nodes() == 1
        proc = fed.start_supernode(rogue, register=False)
        time.sleep(12)
        assert proc.popen.poll() is not None or fed.online_nodes() == 1, "an unregistered SuperNode joined"
        assert fed.online_nodes() == 1, "an unregistered SuperNode joined"
        log = proc.log.read_text(errors="replace")
        pids = all_pids(fed)
    assert_all_stopped(pids, port)
    assert "rogue" not in log and ("not" in log.lower() or "error" in log.lower()), log[-2000:]
