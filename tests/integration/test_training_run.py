"""The training-run helper every trained asset uses: run folder by key, resume into the same MLflow run, shipped
and configured pretrained weights, registration and the output reference."""

from pathlib import Path

import dagster as dg
import pytest

from assets.training_run import TrainingRun
from ops.common.file_io import CheckpointError
from resources import MlflowTracking
from resources.references import AutoencoderRef, ReferenceIOManager, read_reference

pytestmark = pytest.mark.integration


class ToyConfig(dg.Config):
    lr: float = 0.1
    crash: bool = False
    from_scratch: bool = False
    pretrained: str | None = None
    shipped: str = "gan_demo.pt"
    root: str = ""


@dg.asset
def toy_model(context: dg.AssetExecutionContext, config: ToyConfig, mlflow_tracking: MlflowTracking):
    """A 'trainer' that writes one checkpoint, crashes after it when asked, and otherwise registers the model."""
    run = TrainingRun.open(context, mlflow_tracking, Path(config.root), {"lr": config.lr}, "toy-model")
    resumed = run.resuming
    start = run.pretrained(config.from_scratch, config.pretrained, config.shipped)
    with run.mlflow_run("toy"):
        run.state.setdefault("attempts", 0)
        run.state["attempts"] += 1
        run.save_state()
        run.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        run.checkpoint.write_bytes(b"weights")
        if config.crash:
            raise RuntimeError("pre-empted")
        run.register(run.checkpoint, "model")
    ref = run.reference(AutoencoderRef, run.checkpoint, latent_scale=1.0, step=run.state["attempts"])
    return dg.MaterializeResult(
        value=ref,
        metadata={
            **run.version_metadata(),
            "resumed": resumed,
            "pretrained": str(start),
            "run_dir": str(run.run_dir),
        },
    )


def _materialize(home: Path, raise_on_error: bool = False, **config) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [toy_model],
        instance=dg.DagsterInstance.ephemeral(),
        resources={"io_manager": ReferenceIOManager(home=str(home)), "mlflow_tracking": MlflowTracking()},
        run_config=dg.RunConfig(ops={"toy_model": {"config": {"root": str(home / "toy"), **config}}}),
        raise_on_error=raise_on_error,
    )


def test_a_crashed_run_resumes_into_its_folder_and_mlflow_run_and_registers(factory_home):
    crashed = _materialize(factory_home, crash=True)
    assert not crashed.success
    (run_dir,) = (factory_home / "toy").iterdir()
    assert (run_dir / "checkpoint.pt").exists() and (run_dir / "state.json").exists()

    result = _materialize(factory_home)
    assert result.success
    meta = result.asset_materializations_for_node("toy_model")[0].metadata
    assert meta["resumed"].value is True and meta["run_dir"].value == str(run_dir)
    assert meta["model_version"].value == "toy-model/1"
    ref = read_reference(factory_home / "refs" / "toy_model" / "_.json")
    assert isinstance(ref, AutoencoderRef)
    assert (ref.step, ref.model_version, ref.content_hash) == (2, "1", run_dir.name), "two attempts, one run"
    client = MlflowTracking().client()
    assert client.get_run(ref.mlflow_run_id).data.tags["dagster_asset"] == "toy_model"
    assert [v.run_id for v in client.search_model_versions("name='toy-model'")] == [ref.mlflow_run_id]

    other = _materialize(factory_home, lr=0.2).asset_materializations_for_node("toy_model")[0].metadata
    assert other["run_dir"].value != str(run_dir) and other["resumed"].value is False, "a new key, a new run"
    assert other["mlflow_run_id"].value != ref.mlflow_run_id and other["model_version"].value == "toy-model/2"


def test_pretrained_weights_configured_shipped_or_none(factory_home, tmp_path):
    meta = _materialize(factory_home).asset_materializations_for_node("toy_model")[0].metadata
    assert meta["pretrained"].value.endswith("resources/pretrained/gan_demo.pt"), "the shipped file"
    mine = tmp_path / "mine.pt"
    mine.write_bytes(b"w")
    for config, expected in (
        ({"pretrained": str(mine)}, str(mine)),
        ({"from_scratch": True, "pretrained": str(mine)}, "None"),
        ({"shipped": "no_such_preset.pt"}, "None"),
    ):
        meta = _materialize(factory_home, **config).asset_materializations_for_node("toy_model")[0].metadata
        assert meta["pretrained"].value == expected, config
    with pytest.raises(CheckpointError, match=r"nothing\.pt does not exist; fix the path or unset it"):
        _materialize(factory_home, raise_on_error=True, pretrained=str(tmp_path / "nothing.pt"))
