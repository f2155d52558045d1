"""Schedule evaluation, concurrency pools, the free-disk check, and the dask distributed path."""

from __future__ import annotations

from datetime import datetime

import dagster as dg
import pytest

from pipelines import defs
from pipelines.cli import get_instance
from pipelines.schedules import weekly_retraining
from resources import FactoryStorage

pytestmark = pytest.mark.integration


def test_weekly_retraining_requests_only_stale_assets(factory_home):
    instance = get_instance()
    context = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=datetime(2026, 11, 29, 3),
        repository_def=defs.get_repository_def(),
    )
    result = weekly_retraining(context)
    assert isinstance(result, dg.RunRequest)  # nothing trained yet: everything is missing
    assert {k.to_user_string() for k in result.asset_selection} == {
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
        "genseg_model",
        "real_annotations",
        "label_judge",
    }
    assert weekly_retraining.cron_schedule == "0 3 * * 0"


def test_training_assets_share_one_pool_limited_to_one(factory_home):
    graph = defs.get_repository_def().asset_graph
    pools = {k.to_user_string(): graph.get(k).pools for k in graph.get_all_asset_keys()}
    assert {name for name, p in pools.items() if p and "training" in p} == {
        "gan_model",
        "pixel_classifier",
        "downstream_eval",
        "label_judge",
        "autoencoder",
        "ldm_model",
        "federated_gan",
        "federated_tile_check",
        "genseg_model",
    }
    config = get_instance().get_concurrency_config().pool_config
    assert config.default_pool_limit == 1


def test_free_disk_check_names_the_need(factory_home):
    storage = FactoryStorage(home=str(factory_home))
    storage.require_free_disk(1, "tiny")
    with pytest.raises(OSError, match=r"paper features needs about 1000000000\.0 GB under .*bigger disk"):
        storage.require_free_disk(1e18, "paper features")


def test_missing_upstream_says_what_to_materialize(factory_home):
    from factory_helpers import resources_for, selecting

    from assets.gan import gan_model

    with pytest.raises(
        FileNotFoundError, match=r"training_tiles/_\.json is missing: materialize `training_tiles` first"
    ):
        dg.materialize(**selecting([gan_model]), instance=get_instance(), resources=resources_for(factory_home))
