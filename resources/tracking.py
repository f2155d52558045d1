"""MLflow tracking as a small resource (dagster-mlflow is a legacy op-style resource with open bugs).

Defaults to a local sqlite store and artifact folder under the data root, so the demo needs no server:
``mlflow ui --backend-store-uri sqlite:///$HISTOFACTORY_HOME/mlflow.db`` shows the runs.
"""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from resources.storage import default_home


class MlflowTracking(dg.ConfigurableResource):
    """Where training runs are logged."""

    tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI; unset = $HISTOFACTORY_MLFLOW_URI, else "
        "sqlite:///$HISTOFACTORY_HOME/mlflow.db.",
    )
    artifact_root: str | None = Field(
        default=None, description="Artifact folder for new experiments; unset = $HISTOFACTORY_HOME/mlartifacts."
    )
    experiment: str = Field(default="histofactory", description="MLflow experiment name.")

    def uri(self) -> str:
        # Not $MLFLOW_TRACKING_URI: mlflow.set_tracking_uri() exports that variable, so it would leak one data
        # root's store into the next (tests, several factories in one process).
        env = os.environ.get("HISTOFACTORY_MLFLOW_URI")
        return self.tracking_uri or env or f"sqlite:///{default_home() / 'mlflow.db'}"

    def client(self):
        import mlflow

        mlflow.set_tracking_uri(self.uri())
        return mlflow.MlflowClient(self.uri())

    def experiment_id(self) -> str:
        """The experiment's id, created on first use with a local artifact folder.

        Under a file lock for a sqlite store: steps of one run train side by side (Dagster's multiprocess executor),
        and two processes that open a new store at once both run MLflow's schema migrations, one of which fails.
        """
        with self._new_store_lock():
            client = self.client()
            found = client.get_experiment_by_name(self.experiment)
            if found is not None:
                return found.experiment_id
            root = Path(self.artifact_root) if self.artifact_root else default_home() / "mlartifacts"
            root.mkdir(parents=True, exist_ok=True)
            return client.create_experiment(self.experiment, artifact_location=root.resolve().as_uri())

    @contextlib.contextmanager
    def _new_store_lock(self) -> Iterator[None]:
        """Serialises store creation for a local sqlite store (a server store migrates itself once)."""
        uri = self.uri()
        if not uri.startswith("sqlite:///"):
            yield
            return
        from filelock import FileLock

        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{db}.lock"):
            yield

    @contextlib.contextmanager
    def start_run(self, run_name: str, tags: dict[str, str] | None = None, run_id: str | None = None) -> Iterator[Any]:
        """An active MLflow run (resumed when ``run_id`` is given), ended FAILED if the body raises."""
        import mlflow

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mlflow.set_tracking_uri(self.uri())
        kwargs = {"run_id": run_id} if run_id else {"experiment_id": self.experiment_id(), "run_name": run_name}
        with mlflow.start_run(tags=tags, **kwargs) as run:
            yield run

    def register(self, name: str, run_id: str, artifact_path: str) -> str:
        """Register an artifact folder of a run as a new version of model ``name``; returns the version."""
        from mlflow.exceptions import MlflowException

        client = self.client()
        with contextlib.suppress(MlflowException):
            client.create_registered_model(name)
        source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
        return str(client.create_model_version(name, source=source, run_id=run_id).version)
