"""The data root and its layout.

Everything the factory writes lives under one folder, ``$HISTOFACTORY_HOME`` (default ``./data``)::

    slides/                 the inbox: one file per slide (the partition key is the sanitized file stem)
    registry/slides.json    partition key -> file, content hash, opaque slide id (never leaves the factory)
    tiling/<key>/grid/      tissue mask + candidate grid (asset ``tile_grid``)
    tiling/<key>/tiles/     kept tiles (zarr), tile table and QC table (asset ``tissue_tiles``)
    training/               the union of kept tiles with the slide-level fold split (asset ``training_tiles``)
    refs/<asset>/           one small JSON reference per materialization: where its files are, which version
    gan/<run>/              GAN checkpoints of one training configuration (asset ``gan_model``)
    samples/                generated images, latents and seeds in zarr (asset ``generated_samples``)
    annotations/inbox/      masks of generated images from annotators; annotations/current/ the imported set
    annotations/slides/     QuPath GeoJSON drawn on the slides (``<slide key>.geojson``, level-0 pixel coordinates)
    annotations/tiles/      those annotations rasterized onto the kept tiles (asset ``tile_annotations``)
    ldm/                    mask bank, autoencoder and mask-conditioned LDM checkpoints
    genseg/<run>/           GenSeg checkpoints and generator (asset ``genseg_model``)
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
    def refs_dir(self) -> Path:
        """Typed hand-offs between assets (``refs/<asset>/<partition or _>.json``, see ``resources.references``)."""
        return self.root / "refs"

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
    def genseg_root(self) -> Path:
        """GenSeg training runs (asset ``genseg_model``): checkpoint, state and generator file per run key."""
        return self.root / "genseg"

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
    def label_judge_path(self) -> Path:
        """The label judge's weights, beside the real pairs it was trained on; its held-out report is the ``.json``."""
        return self.real_annotations_path.parent / "label_judge.pt"

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
