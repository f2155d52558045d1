"""Typed hand-offs between assets: a small JSON reference per materialization, never the bytes themselves.

An asset returns ``dg.MaterializeResult(value=SomeRef(...))``; ``ReferenceIOManager`` writes the reference to
``$HISTOFACTORY_HOME/refs/<asset>/<partition or _>.json`` (temp file, then rename) and hands it, typed, to every
downstream asset that names the upstream as a parameter (``def gan_model(..., training_tiles: TrainingTilesRef)``).
Tensors, models and tiles stay in the files the reference points to, so a reference is cheap to read in any process
and never unpickles code. A partitioned upstream feeding an unpartitioned asset arrives as ``{partition: ref}``; an
input annotated ``SomeRef | None`` arrives as ``None`` when its upstream was never materialized, so an asset can
decide whether it needs it (the export needs only the routes its config names).
"""

from __future__ import annotations

import json
import time
import typing
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import BaseModel, ConfigDict, Field

from resources.storage import FactoryStorage

NO_PARTITION = "_"


class Reference(BaseModel):
    """Where an asset's output lives and which version it is; subclasses add what their consumers need."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="The output's main file or folder (absolute).")
    mlflow_run_id: str | None = Field(default=None, description="The MLflow run that made it, if one did.")
    step: int | None = Field(default=None, description="Training step of a model output.")
    resolution: int | None = Field(default=None, description="Image edge in pixels, where the output has one.")
    content_hash: str | None = Field(default=None, description="Version of the content (run key, annotation set).")
    class_map: str | None = Field(default=None, description="Class map name of labelled outputs.")
    created_at: float = Field(default_factory=time.time, description="Unix time the reference was written.")


class TileGridRef(Reference):
    """``tile_grid``: the grid folder of one slide (plan, grid table, mask)."""

    slide_id: str


class TissueTilesRef(Reference):
    """``tissue_tiles``: the tile folder of one slide (``tiles.zarr``, ``tiles.parquet``)."""

    slide_id: str
    kept: int

    @property
    def table(self) -> Path:
        return Path(self.path) / "tiles.parquet"

    @property
    def store(self) -> Path:
        return Path(self.path) / "tiles.zarr"


class TrainingTilesRef(Reference):
    """``training_tiles``: the split tile table (``path``); ``content_hash`` is the tile-set hash."""


class GanModelRef(Reference):
    """``gan_model``: the checkpoint (``path``) of one training run; ``content_hash`` is the run key."""

    run_dir: str
    model_version: str
    preset: str
    images_seen: int
    train_slide_ids: list[str]


class GeneratedSamplesRef(Reference):
    """``generated_samples``: the samples zarr (images, z, w, seeds)."""

    checkpoint: str
    n: int


class AnnotationsRef(Reference):
    """``annotations``: the imported annotation set folder; ``content_hash`` is the annotation-set version."""


class GeneratedFeaturesRef(Reference):
    """``generated_features``: the native-resolution feature store."""

    blocks: int


class PixelClassifierRef(Reference):
    """``pixel_classifier``: the ensemble file; ``content_hash`` is the annotation version it learned from."""

    model_version: str
    blocks: int


class ClassifierEvalRef(Reference):
    """``classifier_eval``: the test-split scores of the ensemble at ``path``."""

    mean_dice: float


class TileAnnotationsRef(Reference):
    """``tile_annotations``: the tile-mask folder (``tiles.parquet``, ``masks.zarr``); hash = annotation version."""

    @property
    def table(self) -> Path:
        return Path(self.path) / "tiles.parquet"


class MaskBankRef(Reference):
    """``mask_bank``: the bank file of real mask layouts and shapes."""


class AutoencoderRef(Reference):
    """``autoencoder``: the model file; ``content_hash`` is the run key."""

    model_version: str
    latent_scale: float


class LdmModelRef(Reference):
    """``ldm_model``: the checkpoint with what made it (autoencoder, mask bank, annotation set)."""

    model_version: str
    conditioning: str
    autoencoder: str
    autoencoder_mlflow_run: str
    mask_bank: str
    annotation_version: str
    train_slide_ids: list[str]


class GenSegModelRef(Reference):
    """``genseg_model``: the generator file (weights and architecture A) with what made it; hash = run key."""

    model_version: str
    search: bool
    mask_bank: str
    annotation_version: str
    train_slide_ids: list[str]


class ExportRef(Reference):
    """``synthetic_dataset``: one batch of a versioned export folder; ``content_hash`` is the export version."""

    batch: int


class FederatedGanRef(Reference):
    """``federated_gan``: the global conditional generator file, its lineage file and registered version."""

    lineage: str
    model_version: str
    participants: dict[str, list[str]]


class RealAnnotationsRef(Reference):
    """``real_annotations``: real image-mask pairs of held-out slides (npz)."""

    source: str


class DownstreamRef(Reference):
    """``downstream_eval``: the comparison's results file."""


def _kinds() -> dict[str, type[Reference]]:
    """Every reference class by name (what a stored ``kind`` is resolved against)."""
    found, todo = {}, [Reference]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo += cls.__subclasses__()
    return found


def _is_optional(context: dg.InputContext) -> bool:
    """Whether the input is annotated ``SomeRef | None`` (then a never-materialized upstream loads as None)."""
    typing_type = getattr(context.dagster_type, "typing_type", None)
    return type(None) in typing.get_args(typing_type)


def read_reference(path: Path) -> Reference:
    """A stored reference, as the class it was written as; a clear error for a damaged file."""
    try:
        payload = json.loads(path.read_text())
        kind = _kinds()[payload.pop("kind")]
        return kind.model_validate(payload)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path}: not a readable asset reference ({err}); rematerialize the asset that wrote it"
        ) from err


def write_reference(path: Path, ref: Reference) -> Path:
    """Write via a temp file and rename, so a reader never sees half a reference."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"kind": type(ref).__name__, **ref.model_dump()}, indent=1))
    tmp.replace(path)
    return path


class ReferenceIOManager(dg.ConfigurableIOManager):
    """Stores each output as a small typed JSON reference under ``<data root>/refs`` and loads it back."""

    home: str | None = Field(
        default=None, description="Data root; unset = $HISTOFACTORY_HOME (read when used) or ./data."
    )

    @property
    def refs_dir(self) -> Path:
        return FactoryStorage(home=self.home).refs_dir

    def ref_path(self, asset: str, partition: str | None) -> Path:
        return self.refs_dir / asset / f"{partition or NO_PARTITION}.json"

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:  # an asset that hands nothing on (metadata only)
            return
        asset = context.asset_key.to_user_string()
        if not isinstance(obj, Reference):
            raise TypeError(
                f"asset {asset} returned a {type(obj).__name__}; assets hand on a Reference (resources.references) "
                "pointing at their files, never the bytes themselves"
            )
        partition = context.partition_key if context.has_partition_key else None
        write_reference(self.ref_path(asset, partition), obj)

    def load_input(self, context: dg.InputContext) -> Reference | dict[str, Reference] | None:
        asset = context.asset_key.to_user_string()
        optional = _is_optional(context)
        if context.has_asset_partitions and not context.has_partition_key:
            found = {
                key: read_reference(path)
                for key in context.asset_partition_keys
                if (path := self.ref_path(asset, key)).exists()
            }
            if found or optional:
                return found or None
            raise FileNotFoundError(self._missing(asset, self.refs_dir / asset, "no partition of it was ever"))
        partition = context.asset_partition_key if context.has_asset_partitions else None
        path = self.ref_path(asset, partition)
        if path.exists():
            return read_reference(path)
        if optional:
            return None
        raise FileNotFoundError(self._missing(asset, path, "it was never"))

    @staticmethod
    def _missing(asset: str, path: Path, what: str) -> str:
        return (
            f"{path} is missing: materialize `{asset}` first ({what} materialized under this data root;"
            f" run it and everything upstream of it, e.g. `dagster asset materialize -m pipelines --select "
            f"+{asset}` or the factory job)."
        )
