"""``histofactory demo`` stopped by SIGTERM (a timeout, a container stop) names the stage and leaves no running run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

pytestmark = pytest.mark.integration


def test_sigterm_during_the_factory_run_names_the_stage_and_exits_130(factory_home, slide_a, slide_b, tmp_path):
    inbox = factory_home / "slides"
    inbox.mkdir()
    shutil.copy(slide_a, inbox / "case_a.svs")
    shutil.copy(slide_b, inbox / "case_b.svs")
    env = {**os.environ, "HISTOFACTORY_HOME": str(factory_home), "DAGSTER_HOME": str(factory_home / "dagster")}
    log = tmp_path / "demo.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "histofactory"), "demo"], env=env, cwd=tmp_path, stdout=out, stderr=out
        )
        try:
            deadline = time.monotonic() + 300
            split = factory_home / "training" / "tiles.parquet"  # the factory run's first asset is done
            while not split.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert split.exists(), log.read_text()[-3000:]
            time.sleep(3.0)  # inside a training step by now
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert code == 130, text[-3000:]
    assert "interrupted during stage 'GAN + labelling + classifier + LDM + GenSeg'" in text, text[-3000:]
    assert "CheckError" not in text and "Traceback (most recent call last)" not in text, text[-3000:]
    instance = dg.DagsterInstance.from_config(str(factory_home / "dagster"))
    statuses = {run.job_name: run.status for run in instance.get_runs()}
    assert statuses["factory_demo"] == dg.DagsterRunStatus.FAILURE
    assert all(s in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE) for s in statuses.values()), statuses
    assert f"is {dg.DagsterRunStatus.FAILURE.value} in the Dagster instance" in text


def test_sigterm_while_writing_demo_slides_stops_the_workers_and_leaves_no_temp_file(factory_home, tmp_path):
    env = {**os.environ, "HISTOFACTORY_HOME": str(factory_home), "DAGSTER_HOME": str(factory_home / "dagster")}
    inbox = factory_home / "slides"
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "histofactory"), "demo"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(inbox.glob("*.tmp")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(inbox.glob("*.tmp")), "no demo slide was being written"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)  # writing the 4 slides takes ~50 s: the workers stop instead
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted outside a Dagster run" in err
    assert not list(inbox.glob("*.tmp")), "a stopped worker removes its temp file"
