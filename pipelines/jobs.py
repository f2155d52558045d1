"""Jobs: named asset selections users launch from the UI, the CLI, sensors and schedules.

Each stage that has presets comes as one job per preset (``factory_demo``, ``factory_paper``), so a preset is
picked in the UI by choosing the job, and its config shows (editable) in the launchpad.
"""

import dagster as dg

from pipelines.presets import PRESETS, load_preset, ops_subset

TILING_ASSETS = ["tile_grid", "tissue_tiles"]
FACTORY_ASSETS = [
    "training_tiles",
    "gan_model",
    "generated_samples",
    "annotations",
    "generated_features",
    "pixel_classifier",
    "classifier_eval",
    "tile_annotations",
    "mask_bank",
    "autoencoder",
    "ldm_model",
    "genseg_model",  # fine-tuned briefly from the shipped weights (resources/pretrained/genseg_small.pt)
    "real_annotations",  # before the export: the label judge trained on them scores every exported pair
    "label_judge",
]
GENSEG_ASSETS = ["genseg_model"]  # also a job of its own: (re)train GenSeg without the rest of the factory
EXPORT_ASSETS = ["synthetic_dataset"]
DOWNSTREAM_ASSETS = ["downstream_eval"]

tiling_job = dg.define_asset_job(
    "tiling",
    selection=dg.AssetSelection.assets(*TILING_ASSETS),
    description="Tissue mask, candidate grid, decoding and filtering of one slide partition.",
)


def preset_jobs(prefix: str, assets: list[str], what: str) -> dict:
    """One job per preset over ``assets``, with the preset's config as the job's default config."""
    return {
        preset: dg.define_asset_job(
            f"{prefix}_{preset}",
            selection=dg.AssetSelection.assets(*assets),
            config=ops_subset(load_preset(preset), assets),
            description=f"{what} ({preset} preset).",
            tags={"histofactory/preset": preset},
        )
        for preset in PRESETS
    }


factory_jobs = preset_jobs(
    "factory",
    FACTORY_ASSETS,
    "GAN training, sampling, annotation import, features, "
    "classifier and evaluation; slide annotations, mask bank, autoencoder, LDM and GenSeg",
)

genseg_jobs = preset_jobs(
    "genseg", GENSEG_ASSETS, "GenSeg: mask-to-image generator trained with its segmenter (multi-level optimisation)"
)

export_job = dg.define_asset_job(
    "export",
    selection=dg.AssetSelection.assets(*EXPORT_ASSETS),
    description="One batch (partition) of the synthetic dataset export.",
)

downstream_jobs = preset_jobs(
    "downstream",
    DOWNSTREAM_ASSETS,
    "Learning curve: real vs real + synthetic pairs at each label budget, scored on held-out real crops",
)
