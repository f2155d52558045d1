"""Flower's deployment runtime on loopback: real SuperLink and SuperNode processes, FedAvg across three sites.

Every federation is made through the ``federations`` fixture: at teardown, also when the test failed, it stops
every process the federation started (and their children) and checks that they are gone and the SuperLink's port
is free again. No test waits a fixed time for something to happen; each waits for the event itself, with a deadline.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
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


class Federations:
    """Makes federations and remembers every process they ever ran (``watch`` takes a snapshot: Flower's app
    processes come and go per round and detach into their own sessions)."""

    def __init__(self) -> None:
        self.made: list[Federation] = []
        self.pids: set[int] = set()

    def __call__(self, *args, **kwargs) -> Federation:
        fed = Federation(*args, **kwargs)
        self.made.append(fed)
        return fed

    def watch(self) -> None:
        for fed in self.made:
            self.pids.update(all_pids(fed))

    def stop_and_check(self) -> None:
        self.watch()
        for fed in self.made:
            fed.close()  # idempotent: a federation already closed by its ``with`` has nothing left to stop
        for fed in self.made:
            assert_all_stopped(sorted(self.pids), fed.port)


@pytest.fixture()
def federations() -> Iterator[Federations]:
    """Federations of one test; torn down and checked after it, pass or fail."""
    made = Federations()
    yield made
    made.stop_and_check()


def wait_for(ready: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll ``ready`` until it holds; fail naming ``what`` after ``timeout`` seconds (a deadline, not a delay)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def has_line(path: Path, line: str) -> bool:
    return path.exists() and line in path.read_text()


def open_writer_when_read(fifo: Path, stop: threading.Event) -> int | None:
    """A write end of ``fifo`` as soon as a process opens it for reading (never before), or None once ``stop``."""
    while not stop.is_set():
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as err:
            if err.errno != errno.ENXIO:  # ENXIO: nobody has it open for reading yet
                raise
        time.sleep(0.05)
    return None


@pytest.mark.timeout(420)
def test_three_sites_two_rounds_survive_a_killed_supernode(tmp_path, three_sites, federations):
    """Round 1 has all three sites; site c's SuperNode is killed in round 2 after its ClientApp received the
    round's instruction and before it could reply, and the run still finishes with a and b, the lineage saying who
    took part. The global model differs from every site's local one, and nothing on the server side tried to read a
    site's folder.

    Deterministic: site c's ``labels.csv`` is a FIFO, so each round its ClientApp blocks reading its labels until
    the test answers. Round 1 gets the labels; in round 2 the test kills the SuperNode while the ClientApp is blocked
    there (it has the instruction, it cannot have replied), then lets go of the FIFO.
    """
    site_c = three_sites[2]
    fifo = Path(site_c.root) / "labels.csv"
    os.mkfifo(fifo)
    labels = "slide,tile_index,label\n" + "".join(f"slide_c,{i},{i % 2}\n" for i in range(10))
    fed = federations(tmp_path / "federation", three_sites)
    progress = fed.workdir / "logs" / "c.progress"
    stop, events = threading.Event(), []

    def serve_then_crash_site_c() -> None:
        fd = open_writer_when_read(fifo, stop)  # round 1: site c's ClientApp reads its labels
        if fd is None:
            return
        os.set_blocking(fd, True)
        os.write(fd, labels.encode())
        os.close(fd)
        # Round 2 starts after round 1's reader is done: only then can a new reader be round 2's.
        while not stop.is_set() and not has_line(progress, "round 2 start"):
            time.sleep(0.1)
        fd = open_writer_when_read(fifo, stop)
        if fd is None:
            return
        fed.kill("supernode-c")  # its ClientApp is blocked reading the FIFO: killed before any reply
        events.append(progress.read_text())
        os.close(fd)

    with fed:
        federations.watch()
        killer = threading.Thread(target=serve_then_crash_site_c, daemon=True)
        killer.start()
        try:
            lineage = fed.run(run_config(rounds=2, min_sites=2, round_timeout=90.0), tmp_path / "out", timeout=360)
        finally:
            stop.set()
            killer.join(timeout=15)
        federations.watch()
        server_env = psutil.Process(fed.proc("superlink").popen.pid).environ()

    assert events and "round 2 start" in events[0] and "round 2 done" not in events[0], events
    first, second = lineage["rounds"]
    assert sorted(s["site"] for s in first["sites"]) == ["a", "b", "c"]
    assert sorted(s["site"] for s in second["sites"]) == ["a", "b"]
    assert second["missing"] + len(second["failed"]) == 1, "site c's round-2 message is recorded as unanswered"
    examples = {s["site"]: s["metrics"]["num-examples"] for s in first["sites"]}
    assert examples == {"a": 12, "b": 10, "c": 10}
    c_shares = next(s["metrics"] for s in first["sites"] if s["site"] == "c")
    assert c_shares["share-1"] == pytest.approx(0.5), "site c trained on the labels served through the FIFO"
    assert all(s["distance_to_global"] > 1e-3 for r in lineage["rounds"] for s in r["sites"])

    payload = torch.load(tmp_path / "out" / MODEL_FILE, weights_only=True)
    G, D = CondGenerator(GAN), CondDiscriminator(GAN)
    G.load_state_dict(payload["G"])
    D.load_state_dict(payload["D"])
    assert str(three_sites[0].root) in server_env["HISTOFACTORY_DENY_PATHS"]
    assert not fed.deny_log.exists(), f"the server side tried to read site data: {fed.deny_log.read_text()}"


@pytest.mark.timeout(240)
def test_unregistered_supernode_is_refused(tmp_path, three_sites, federations):
    a, rogue = three_sites[0], Site("rogue", three_sites[1].root)
    fed = federations(tmp_path / "federation", [a], auth=True)
    with fed:
        assert fed.online_nodes() == 1
        proc = fed.start_supernode(rogue, register=False)
        federations.watch()

        wait_for(lambda: proc.popen.poll() is not None, "the unregistered SuperNode to be refused and exit", 120)
        assert fed.online_nodes() == 1, "an unregistered SuperNode joined"
        log = proc.log.read_text(errors="replace")
    assert proc.popen.returncode != 0 and "Failed to activate SuperNode" in log, log[-2000:]


@pytest.mark.timeout(120)
def test_a_failing_body_still_stops_every_process(tmp_path, three_sites):
    """What the ``federations`` fixture relies on: leaving the ``with`` by an exception stops every process and
    frees the port (checked here directly, not by the fixture)."""
    fed = Federation(tmp_path / "federation", three_sites[:1])
    with pytest.raises(RuntimeError, match="the test body failed"), fed:
        pids, port = all_pids(fed), fed.port
        assert pids and port_open(port)
        raise RuntimeError("the test body failed")
    assert_all_stopped(pids, port)
