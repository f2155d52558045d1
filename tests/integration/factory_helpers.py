"""Shared settings for integration tests: tiny configs and the resources pointed at a test data root."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

from resources import DaskResource, FactoryStorage, MlflowTracking, TorchDevice
from resources.references import Reference, ReferenceIOManager, read_reference

# A GAN run of 12 steps at batch 4 (seconds on CPU), from random weights.
TINY_GAN = {
    "kimg": 0.048,
    "batch_size": 4,
    "checkpoint_every": 3,
    "log_every": 1,
    "swd_images": 16,
    "from_scratch": True,
}


def resources_for(home: Path) -> dict:
    """The code location's resources, pointed at a test data root."""
    return {
        "io_manager": ReferenceIOManager(home=str(home)),
        "storage": FactoryStorage(home=str(home)),
        "dask": DaskResource(),
        "torch_device": TorchDevice(threads=2),
        "mlflow_tracking": MlflowTracking(),
    }


def selecting(assets: list) -> dict:
    """``dg.materialize`` arguments that run only ``assets`` (and their checks), with every other asset of the code
    location present as an upstream whose reference the IO manager loads (an input needs its producer defined)."""
    from pipelines import defs

    checks = [a for a in assets if isinstance(a, dg.AssetChecksDefinition)]
    selection = dg.AssetSelection.assets(*[a for a in assets if a not in checks])
    if checks:
        selection = selection | dg.AssetSelection.checks(*checks)
    return {"assets": [*defs.assets, *defs.asset_checks], "selection": selection}


def read_ref(home: Path, asset: str, partition: str | None = None) -> Reference:
    """The reference an asset handed on (what its downstream assets receive)."""
    return read_reference(home / "refs" / asset / f"{partition or '_'}.json")


# The factory chain on tiny settings: 16 samples, 12 demo-annotated (6/2/4), 3 blocks, 3 small MLPs.
TINY_CHAIN = {
    "gan_model": {"config": TINY_GAN},
    "generated_samples": {"config": {"n": 16}},
    "annotations": {"config": {"demo_annotator": True, "demo_count": 12, "n_train": 6, "n_val": 2, "n_test": 4}},
    "generated_features": {"config": {"blocks": 3}},
    "pixel_classifier": {"config": {"members": 3, "max_epochs": 2, "batches_per_epoch": 5, "batch_size": 1024}},
}


# The tiny chain's models train for seconds: they are not expected to pass the quality gates' real thresholds (the
# gates themselves are tested in test_quality_gates.py), so chain tests set the model gates' thresholds near zero.
TINY_GATES = {
    "gan_model_swd_below_untrained": {"config": {"max_fraction_of_untrained": 1e6}},
    "classifier_eval_dice_above_chance": {"config": {"min_times_chance": 1e-6}},
    "ldm_model_mask_agreement_above_chance": {"config": {"min_mask_agreement": 1e-6}},
    "genseg_model_genseg_follows_masks": {"config": {"min_mask_agreement": 1e-6}},
}


def tiny_gates(assets: list) -> dict:
    """``TINY_GATES`` entries for the gates of ``assets``: selecting an asset also runs its checks, so every tiny run
    that trains a gated model needs the near-zero threshold (at the default, a seconds-long model passes or fails by
    chance: ``classifier_eval``'s gate failed one CI run this way)."""
    names = {key.to_user_string() for a in assets if isinstance(a, dg.AssetsDefinition) for key in a.keys}
    return {op: cfg for op, cfg in TINY_GATES.items() if any(op.startswith(f"{name}_") for name in names)}


def tile_every_slide(home: Path) -> dg.DagsterInstance:
    """Register the inbox's slides in the instance and tile each one; returns the instance."""
    from assets.slides import tile_grid, tissue_tiles
    from pipelines.cli import get_instance, sync_slides

    instance = get_instance()
    for key in sync_slides(instance):
        assert dg.materialize(
            [tile_grid, tissue_tiles], partition_key=key, instance=instance, resources=resources_for(home)
        ).success
    return instance


# The LDM route on tiny settings: 2 demo-annotated tiles per training slide, a few autoencoder and LDM steps.
TINY_LDM = {
    "tile_annotations": {"config": {"demo_annotator": True, "demo_tiles_per_slide": 2}},
    "mask_bank": {"config": {"resolution": 64, "crops": 32}},
    "autoencoder": {"config": {"kimg": 0.032, "batch_size": 8, "checkpoint_every": 2, "eval_images": 8}},
    "ldm_model": {
        "config": {"kimg": 0.032, "batch_size": 8, "checkpoint_every": 2, "preview_steps": 2, "preview_images": 4}
    },
}


# GenSeg on tiny settings (with TINY_LDM's annotated tiles and mask bank): 8 steps of batch 2 of the half-width
# architecture. Its images cannot follow their masks after 8 steps: chains take the gate's near-zero threshold.
TINY_GENSEG_MODEL = {
    "genseg_model": {
        "config": {
            "preset": "small",
            "kimg": 0.016,
            "batch_size": 2,
            "checkpoint_every": 4,
            "log_every": 1,
            "preview_images": 4,
        }
    },
}


def kill_after_first_checkpoint(home: Path, asset: str, run_config: dict, pattern: str, cwd: Path) -> Path:
    """Materialize ``asset`` with the ``dagster`` CLI, SIGKILL its process group once a checkpoint matching
    ``pattern`` (a glob under ``home``) exists, as a crash or a pre-empted node would; returns the checkpoint."""
    env = {**os.environ, "HISTOFACTORY_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster"),
            "asset",
            "materialize",
            "-m",
            "pipelines",
            "--select",
            asset,
            "--config-json",
            json.dumps(run_config),
        ],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        found: list[Path] = []
        while time.monotonic() < deadline and not found:
            found = sorted(home.glob(pattern))
            time.sleep(0.2)
        assert found, f"no checkpoint {pattern} appeared"
        time.sleep(1.0)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return found[0]
