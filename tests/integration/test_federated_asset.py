"""``federated_gan`` end to end: two tiled demo slides are two sites on a real loopback federation."""

from __future__ import annotations

import sys
from pathlib import Path

import dagster as dg
import mlflow
import pytest
from factory_helpers import read_ref, resources_for, selecting

from assets.federated import federated_gan
from assets.slides import training_tiles

pytestmark = pytest.mark.integration

_watch: dict = {"root": None, "opened": []}


def _audit(event: str, args: tuple) -> None:
    """Record every file the test process opens under the watched folder while ``_watch['root']`` is set."""
    root = _watch["root"]
    if root and event == "open" and isinstance(args[0], str) and args[0].startswith(root):
        _watch["opened"].append(args[0])


sys.addaudithook(_audit)


@pytest.mark.timeout(600)
def test_federated_gan_trains_across_sites_and_records_lineage(tiled_home):
    home, instance = tiled_home
    resources = resources_for(home)
    assert dg.materialize(**selecting([training_tiles]), instance=instance, resources=resources).success
    config = {"rounds": 2, "min_sites": 2, "local_epochs": 1.0, "batch_size": 8, "round_timeout": 240.0}
    _watch["root"] = str(home / "tiling")
    try:
        result = dg.materialize(
            **selecting([federated_gan]),
            instance=instance,
            resources=resources,
            run_config=dg.RunConfig(ops={"federated_gan": {"config": config}}),
        )
    finally:
        _watch["root"] = None
    assert result.success
    assert not _watch["opened"], f"the asset opened site data itself: {_watch['opened'][:3]}"

    meta = result.asset_materializations_for_node("federated_gan")[0].metadata
    assert meta["rounds"].value == 2 and meta["sites"].value == 2
    assert meta["participants"].value == {"1": ["case_a", "case_b"], "2": ["case_a", "case_b"]}
    samples = meta["site_samples"].value
    assert set(samples) == {"case_a", "case_b"} and all(n > 0 for n in samples.values())
    shares = meta["site_class_shares"].value
    assert all(sum(s) == pytest.approx(1.0) for s in shares.values())
    assert meta["samples"].value.startswith("![conditional samples")

    client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    run = client.get_run(meta["mlflow_run_id"].value)
    assert run.data.tags["dagster_run_id"] == result.run_id
    assert {"fedavg_d_adv", "sites_replied", "case_a_num-examples"} <= set(run.data.metrics)
    assert (
        client.get_model_version("histofactory-cgan-federated", meta["model_version"].value).run_id == run.info.run_id
    )
    ref = read_ref(home, "federated_gan")
    assert ref.mlflow_run_id == run.info.run_id and ref.model_version == meta["model_version"].value
    assert Path(ref.path).is_file() and Path(ref.lineage).is_file()
