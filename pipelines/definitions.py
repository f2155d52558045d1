"""The code location: assembles assets, jobs, sensors and resources (nothing else lives here)."""

import dagster as dg

from assets import diffusion, evaluation, export, gan, genseg, labelling, slides
from assets.diffusion import autoencoder, ldm_model, mask_bank
from assets.evaluation import downstream_eval, label_judge, real_annotations
from assets.export import synthetic_dataset
from assets.federated import federated_gan
from assets.gan import gan_model, generated_samples
from assets.genseg import genseg_model
from assets.labelling import annotations, classifier_eval, generated_features, pixel_classifier, tile_annotations
from assets.slides import tile_grid, tissue_tiles, training_tiles
from pipelines.jobs import downstream_jobs, export_job, factory_jobs, genseg_jobs, tiling_job
from pipelines.schedules import weekly_retraining
from pipelines.sensors import slide_inbox_sensor
from resources import DaskResource, FactoryStorage, MlflowTracking, TorchDevice
from resources.references import ReferenceIOManager

defs = dg.Definitions(
    assets=[
        tile_grid,
        tissue_tiles,
        training_tiles,
        gan_model,
        generated_samples,
        annotations,
        generated_features,
        pixel_classifier,
        classifier_eval,
        tile_annotations,
        mask_bank,
        autoencoder,
        ldm_model,
        genseg_model,
        synthetic_dataset,
        real_annotations,
        label_judge,
        downstream_eval,
        federated_gan,
    ],
    # Each stage's quality gates sit at the end of its assets module; a new one needs no edit here.
    asset_checks=dg.load_asset_checks_from_modules([slides, gan, labelling, diffusion, genseg, export, evaluation]),
    jobs=[tiling_job, *factory_jobs.values(), *genseg_jobs.values(), export_job, *downstream_jobs.values()],
    sensors=[slide_inbox_sensor],
    schedules=[weekly_retraining],
    resources={
        "io_manager": ReferenceIOManager(),  # assets hand on small typed JSON references, never pickles
        "storage": FactoryStorage(),
        "dask": DaskResource(),
        "mlflow_tracking": MlflowTracking(),
        "torch_device": TorchDevice(),
    },
)
