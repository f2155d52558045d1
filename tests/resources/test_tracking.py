"""A new local MLflow store opened by two step processes at once (a multiprocess run's first training steps)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from resources import MlflowTracking


def _experiment_id(folder: str) -> str:
    return MlflowTracking(tracking_uri=f"sqlite:///{folder}/mlflow.db", artifact_root=f"{folder}/art").experiment_id()


def test_two_processes_creating_the_store_at_once_get_one_experiment(tmp_path: Path) -> None:
    # Without the lock one of them fails in MLflow's schema migration (measured: 3 of 3 tries).
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        ids = pool.map(_experiment_id, [str(tmp_path)] * 2)
    assert ids[0] == ids[1]
    client = MlflowTracking(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").client()
    named = [e.experiment_id for e in client.search_experiments() if e.name == MlflowTracking().experiment]
    assert named == [ids[0]]
