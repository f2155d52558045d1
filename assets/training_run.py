"""The bookkeeping every trained asset shares: run folder, resume state, pretrained weights, MLflow, registry.

A training run is keyed by the hash of what determines its result (config and upstream versions), so
re-materializing an interrupted run finds its folder, checkpoint and MLflow run again and continues both, while a
changed config or upstream starts a new folder. Before this lived here, the GAN and the diffusion assets each
carried their own copy; a new trained asset now only says what its key is, what its pretrained file is called, and
which files to log and register.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg

from assets.lineage import content_hash, write_json_atomic
from ops.common.file_io import CheckpointError
from ops.common.provenance import write_provenance
from resources import FactoryStorage, MlflowTracking
from resources.references import Reference

R = TypeVar("R", bound=Reference)


@dataclass
class TrainingRun:
    """One training run of one asset; ``state`` (MLflow run id, baselines, flags) survives interruptions.

    Attributes:
        context: The asset's execution context (logging, Dagster run id for MLflow tags).
        tracking: Where MLflow runs are logged and models registered.
        run_dir: ``<stage root>/<run key>``: checkpoint, state and final model files of this run.
        run_key: Hash of the config and upstream versions that make the run.
        model_name: Registered-model name in MLflow.
        resume: False for trainers without checkpoints: every materialization starts a fresh MLflow run.
    """

    context: dg.AssetExecutionContext
    tracking: MlflowTracking
    run_dir: Path
    run_key: str
    model_name: str
    resume: bool = True
    state: dict[str, Any] = field(default_factory=dict)
    model_version: str | None = None

    @classmethod
    def open(
        cls,
        context: dg.AssetExecutionContext,
        tracking: MlflowTracking,
        root: Path,
        key: dict[str, Any],
        model_name: str,
        resume: bool = True,
        length: dict[str, Any] | None = None,
        continue_training: bool = False,
    ) -> TrainingRun:
        """The run for ``key`` under ``root``, with the state an earlier, interrupted run left (if resuming).

        Args:
            key: What determines the result (config and upstream versions), without the training length.
            length: Settings that only say how long to train (``kimg``); part of the run key, so a longer run is
                by default a new run.
            continue_training: Instead, continue the latest run under ``root`` whose key equals ``key`` whatever its
                length: its folder, checkpoint and MLflow run, trained on to the new length. With no such run, a
                new one starts (with a warning).
        """
        run_key = content_hash({**key, **(length or {})})
        lineage = content_hash(key)
        if continue_training:
            found = cls._latest_of_lineage(root, lineage)
            if found is None:
                context.log.warning(f"continue_training: no finished run of this config under {root}; starting one")
            else:
                context.log.info(f"continue_training: extending run {found.name} (its checkpoint and MLflow run)")
                run_key = found.name
        run = cls(context, tracking, root / run_key, run_key, model_name, resume)
        if resume and run.state_file.exists():
            run.state = json.loads(run.state_file.read_text())
        run.state["lineage_key"] = lineage
        return run

    @staticmethod
    def _latest_of_lineage(root: Path, lineage: str) -> Path | None:
        """The run folder under ``root`` with ``lineage`` and a checkpoint, most recently checkpointed first."""
        found = []
        for state_file in root.glob("*/state.json"):
            checkpoint = state_file.parent / "checkpoint.pt"
            if checkpoint.exists() and json.loads(state_file.read_text()).get("lineage_key") == lineage:
                found.append((checkpoint.stat().st_mtime, state_file.parent))
        return max(found)[1] if found else None

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "state.json"

    @property
    def resuming(self) -> bool:
        """True when an earlier run of this key left a checkpoint to continue from."""
        return self.resume and self.checkpoint.exists()

    @property
    def mlflow_run_id(self) -> str:
        return self.state["mlflow_run_id"]

    def save_state(self) -> None:
        write_json_atomic(self.state_file, self.state)

    def pretrained(self, from_scratch: bool, configured: str | None, shipped_name: str) -> Path | None:
        """The weights to fine-tune from: the configured file (must exist), else the shipped one, else none."""
        if from_scratch:
            return None
        if configured:
            if not Path(configured).is_file():
                raise CheckpointError(f"pretrained file {configured} does not exist; fix the path or unset it")
            self.context.log.info(f"fine-tuning from {configured}")
            return Path(configured)
        shipped = FactoryStorage.pretrained(shipped_name)
        if shipped.is_file():
            self.context.log.info(f"fine-tuning from the shipped {shipped.name}")
            return shipped
        self.context.log.warning(f"no shipped weights for this preset ({shipped.name}); training from random weights")
        return None

    def record_provenance(
        self, what: str, config: dict[str, Any], trainer: Any, resumed_from: int, seconds: float
    ) -> Path:
        """``<checkpoint>.json``: every materialization that trained this run, with its command, so weights exported
        from the checkpoint say how they were made (``ops.common.provenance``)."""
        asset = self.context.asset_key.to_user_string()
        history = self.state.setdefault("history", [])
        history.append(
            {
                "dagster_run_id": self.context.run.run_id,
                "kimg": config.get("kimg"),
                "from_step": resumed_from,
                "to_step": trainer.step,
                "wall_seconds": round(seconds, 1),
                "command": f"dagster asset materialize -m pipelines --select {asset} --config-json "
                f"'{json.dumps({'ops': {asset: {'config': config}}})}'",
            }
        )
        self.save_state()
        return write_provenance(
            self.checkpoint,
            {
                "what": what,
                "mlflow_run_id": self.mlflow_run_id,
                "run_key": self.run_key,
                "config": config,
                "step": trainer.step,
                "images_seen": trainer.images_seen,
                **({"train_seconds": round(trainer.train_seconds, 1)} if hasattr(trainer, "train_seconds") else {}),
                "wall_seconds": round(sum(h["wall_seconds"] for h in history), 1),
                "materializations": history,
            },
        )

    @contextlib.contextmanager
    def mlflow_run(self, run_name: str) -> Iterator[Any]:
        """The MLflow run of this training run: resumed when an earlier attempt started one, else new.

        The run id is stored in the state as soon as the run exists, so a crash mid-training resumes into it.
        """
        asset = self.context.asset_key.to_user_string()
        tags = {"dagster_run_id": self.context.run.run_id, "dagster_asset": asset, "run_key": self.run_key}
        with self.tracking.start_run(f"{run_name}-{self.run_key[:8]}", tags, self.state.get("mlflow_run_id")) as run:
            self.state["mlflow_run_id"] = run.info.run_id
            self.save_state()
            yield run

    def register(self, artifact: Path, artifact_path: str) -> str:
        """Log ``artifact`` into the active run under ``artifact_path`` and register that folder as a new version."""
        import mlflow

        mlflow.log_artifact(str(artifact), artifact_path)
        self.model_version = self.tracking.register(self.model_name, self.mlflow_run_id, artifact_path)
        return self.model_version

    def reference(self, kind: type[R], path: Path, **fields: Any) -> R:
        """The output reference: the run's MLflow id, key and (when the class has one) registered version."""
        known = kind.model_fields
        defaults = {"mlflow_run_id": self.mlflow_run_id, "content_hash": self.run_key}
        if "model_version" in known:
            defaults["model_version"] = self.model_version
        return kind(path=str(path), **{**defaults, **fields})

    def version_metadata(self) -> dict[str, Any]:
        """What every trained asset shows: its MLflow run and registered model version."""
        return {"mlflow_run_id": self.mlflow_run_id, "model_version": f"{self.model_name}/{self.model_version}"}
