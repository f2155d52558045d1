"""The data root and its layout.

Everything the factory writes lives under one folder, ``$HISTOFACTORY_HOME`` (default ``./data``)::

    slides/                 the inbox: one file per slide (the partition key is the sanitized file stem)
    registry/slides.json    partition key -> file, content hash, opaque slide id (never leaves the factory)
    tiling/<key>/grid/      tissue mask + candidate grid (asset ``tile_grid``)
    tiling/<key>/tiles/     kept tiles (zarr), tile table and QC table (asset ``tissue_tiles``)
    training/               the union of kept tiles with the slide-level fold split (asset ``training_tiles``)
    gan/<run>/              GAN checkpoints of one training configuration (asset ``gan_model``); gan/current.json
    samples/                generated images, latents and seeds in zarr (asset ``generated_samples``)
    annotations/inbox/      masks of generated images from annotators; annotations/current/ the imported set
    annotations/slides/     QuPath GeoJSON drawn on the slides (``<slide key>.geojson``, level-0 pixel coordinates)
    annotations/tiles/      those annotations rasterized onto the kept tiles (asset ``tile_annotations``)
    ldm/                    mask bank, autoencoder and mask-conditioned LDM checkpoints (``ldm/current.json``)
    features/               generator features of the annotated images, native resolution (zarr)
    classifier/             the pixel-classifier ensemble
    export/<version>/       synthetic image-mask pairs with manifest and dataset card (asset ``synthetic_dataset``)
    mlflow.db, mlartifacts/ the local MLflow tracking store
    dagster/                Dagster storage used by the ``histofactory`` CLI when DAGSTER_HOME is unset
"""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from ops.slides.registry import SlideEntry, SlideRegistry


def default_home() -> Path:
    """``$HISTOFACTORY_HOME`` or ``./data``, made absolute so runs in other processes agree on it."""
    return Path(os.environ.get("HISTOFACTORY_HOME") or "data").expanduser().resolve()


class FactoryStorage(dg.ConfigurableResource):
    """Local file-system layout of the factory's data root."""

    home: str | None = Field(
        default=None, description="Data root; unset = $HISTOFACTORY_HOME (read when used) or ./data."
    )

    @property
    def root(self) -> Path:
        return Path(self.home).expanduser().resolve() if self.home else default_home()

    @property
    def inbox(self) -> Path:
        return self.root / "slides"

    @property
    def registry_path(self) -> Path:
        return self.root / "registry" / "slides.json"

    def registry(self) -> SlideRegistry:
        return SlideRegistry(self.registry_path)

    def slide(self, key: str) -> tuple[SlideEntry, Path]:
        """The registry entry and file of a slide partition; a clear error if it is unknown or gone."""
        entry = self.registry().get(key)
        path = self.inbox / entry.file
        if not path.exists():
            raise FileNotFoundError(
                f"slide partition {key!r}: its file {path} has vanished from the inbox. Put it back, or let the "
                "inbox sensor (or `histofactory slides list`) remove the partition."
            )
        return entry, path

    def output_marker(self, asset: str) -> Path:
        """The file whose presence means ``asset`` has been materialized (written last, atomically)."""
        markers = {
            "training_tiles": self.training_dir / "tiles.parquet",
            "gan_model": self.gan_root / "current.json",
            "generated_samples": self.samples_dir / "samples.zarr",
            "annotations": self.annotations_dir / "index.parquet",
            "generated_features": self.features_dir / "native.zarr",
            "pixel_classifier": self.classifier_dir / "lineage.json",
            "real_annotations": self.real_annotations_path,
            "tile_annotations": self.tile_annotations_dir / "tiles.parquet",
            "mask_bank": self.ldm_root / "mask_bank.npz",
            "autoencoder": self.ldm_root / "autoencoder.json",
            "ldm_model": self.ldm_root / "current.json",
        }
        return markers[asset]

    def require(self, *assets: str) -> None:
        """Fail with the fix when an upstream asset's output is missing (e.g. a hand-picked asset selection)."""
        for asset in assets:
            marker = self.output_marker(asset)
            if not marker.exists():
                raise FileNotFoundError(
                    f"{marker} is missing: materialize `{asset}` first (it and everything upstream of it, e.g. "
                    f"`dagster asset materialize -m pipelines --select +{asset}` or the factory job)."
                )

    def require_free_disk(self, need_bytes: float, what: str) -> None:
        """Fail before writing when the data root lacks room, saying how much is needed (paper scale: TBs)."""
        import shutil

        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if need_bytes > free:
            raise OSError(
                f"{what} needs about {need_bytes / 1e9:.1f} GB under {self.root}, but only {free / 1e9:.1f} GB are "
                "free. Free space, point HISTOFACTORY_HOME at a bigger disk, or use a smaller preset."
            )

    def grid_dir(self, key: str) -> Path:
        return self.root / "tiling" / key / "grid"

    def tiles_dir(self, key: str) -> Path:
        return self.root / "tiling" / key / "tiles"

    @property
    def training_dir(self) -> Path:
        return self.root / "training"

    @property
    def gan_root(self) -> Path:
        return self.root / "gan"

    @property
    def samples_dir(self) -> Path:
        return self.root / "samples"

    @property
    def annotation_inbox(self) -> Path:
        """Where annotators drop masks of generated images (``sample_00012.png`` / ``.geojson``)."""
        return self.root / "annotations" / "inbox"

    @property
    def annotations_dir(self) -> Path:
        return self.root / "annotations" / "current"

    @property
    def slide_annotation_inbox(self) -> Path:
        """Where QuPath GeoJSON exports drawn on whole slides go, named ``<slide partition key>.geojson``."""
        return self.root / "annotations" / "slides"

    @property
    def tile_annotations_dir(self) -> Path:
        return self.root / "annotations" / "tiles"

    @property
    def ldm_root(self) -> Path:
        return self.root / "ldm"

    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    @property
    def classifier_dir(self) -> Path:
        return self.root / "classifier"

    @property
    def real_annotations_path(self) -> Path:
        """Real image-mask pairs for the downstream test (``images``, ``masks`` in one npz)."""
        return self.root / "annotations" / "real" / "pairs.npz"

    @property
    def downstream_path(self) -> Path:
        return self.root / "downstream" / "results.json"

    @property
    def export_root(self) -> Path:
        """Versioned synthetic-dataset exports: ``export/<version>/`` (old versions are kept)."""
        return self.root / "export"

    @staticmethod
    def pretrained(name: str) -> Path:
        """A checkpoint shipped with the package (``resources/pretrained/<name>``)."""
        return Path(__file__).resolve().parent / "pretrained" / name
