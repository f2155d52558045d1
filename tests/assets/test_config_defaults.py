"""A default lives in one place: each stage's Config starts where the ops dataclass it fills in starts.

The Config classes are what a user sees in the launchpad; the ops dataclasses are what notebooks, benchmarks and
tests use. When the two disagree, the same training means two different things depending on how it is started, so
every field a Config shares with an ops dataclass must have the same default, and every choice a Config offers must
be one the ops registry knows.
"""

from __future__ import annotations

import dataclasses
from typing import Any, get_args

import pytest
from pydantic import BaseModel

from assets.diffusion import AutoencoderTrainingConfig, LdmTrainingConfig
from assets.evaluation import DownstreamConfig
from assets.export import ExportConfig
from assets.federated import TileCheckConfig
from assets.gan import GanTrainingConfig
from assets.genseg import GenSegTrainingConfig
from assets.labelling import AnnotationConfig, ClassifierConfig, TileAnnotationConfig
from assets.slides import TileFilterConfig, TileGridConfig, TissueMaskConfig
from ops.diffusion.autoencoder import AE_PRESETS
from ops.diffusion.denoiser import CONDITIONINGS, LDM_PRESETS, LdmConfig, LdmTrainConfig
from ops.diffusion.samplers import SAMPLERS
from ops.evaluation.budget_routes import RouteRetraining
from ops.export.gan_route import ExportParams
from ops.federated.downstream import CheckSettings
from ops.gan.loop import LoopConfig
from ops.gan.networks import GAN_PRESETS
from ops.gan.trainer import TrainConfig as GanTrainConfig
from ops.genseg.augment import MaskAugmentConfig
from ops.genseg.networks import GENSEG_PRESETS
from ops.genseg.trainer import HYPERGRADS, GenSegTrainConfig
from ops.labelling.class_maps import CLASS_MAPS
from ops.labelling.pixel_classifier import OPTIMIZERS, EnsembleConfig, MLPConfig
from ops.labelling.pixel_classifier import TrainConfig as MlpTrainConfig
from ops.slides.tiling import TilingParams
from ops.slides.tissue import TissueMaskParams

# (Config, ops dataclass its values are passed to, Config field -> dataclass field where the names differ)
PAIRS: list[tuple[type[BaseModel], type, dict[str, str]]] = [
    (TissueMaskConfig, TissueMaskParams, {}),
    (TileGridConfig, TilingParams, {}),
    (TileFilterConfig, TilingParams, {}),
    (GanTrainingConfig, GanTrainConfig, {}),
    (GanTrainingConfig, LoopConfig, {}),
    (ClassifierConfig, MlpTrainConfig, {}),
    (ClassifierConfig, MLPConfig, {}),
    (ClassifierConfig, EnsembleConfig, {"members": "n_members"}),
    (LdmTrainingConfig, LdmTrainConfig, {}),
    (LdmTrainingConfig, LdmConfig, {}),
    (ExportConfig, ExportParams, {}),
    (GenSegTrainingConfig, GenSegTrainConfig, {}),
    (GenSegTrainingConfig, MaskAugmentConfig, {}),
    (TileCheckConfig, CheckSettings, {}),
    (DownstreamConfig, RouteRetraining, {}),
]


def _plain(value: Any) -> Any:
    """Comparable form: nested Configs and dataclasses as dicts, lists as tuples."""
    if isinstance(value, BaseModel):
        return _plain(value.model_dump())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return tuple(_plain(v) for v in value)
    return value


def _dataclass_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING  # required: the Config must supply it, nothing to compare


@pytest.mark.parametrize(("config", "ops_class", "renames"), PAIRS, ids=lambda v: getattr(v, "__name__", ""))
def test_config_defaults_equal_ops_defaults(config: type[BaseModel], ops_class: type, renames: dict[str, str]) -> None:
    ops_fields = {f.name: f for f in dataclasses.fields(ops_class)}
    shared = [name for name in config.model_fields if renames.get(name, name) in ops_fields]
    assert shared, f"{config.__name__} shares no field with {ops_class.__name__}: fix PAIRS"
    for name in shared:
        ops_default = _dataclass_default(ops_fields[renames.get(name, name)])
        if ops_default is dataclasses.MISSING:
            continue
        assert _plain(config.model_fields[name].default) == _plain(ops_default), (
            f"{config.__name__}.{name} defaults to {config.model_fields[name].default!r} but "
            f"{ops_class.__name__}.{renames.get(name, name)} to {ops_default!r}: change one so they agree"
        )


@pytest.mark.parametrize(
    ("config", "field", "known"),
    [
        (GanTrainingConfig, "preset", GAN_PRESETS),
        (AutoencoderTrainingConfig, "preset", AE_PRESETS),
        (LdmTrainingConfig, "preset", LDM_PRESETS),
        (LdmTrainingConfig, "conditioning", CONDITIONINGS),
        (AnnotationConfig, "class_map", CLASS_MAPS),
        (TileAnnotationConfig, "class_map", CLASS_MAPS),
        (ClassifierConfig, "optimizer", OPTIMIZERS),
        (ExportConfig, "ldm_sampler", SAMPLERS),
        (GenSegTrainingConfig, "preset", GENSEG_PRESETS),
        (GenSegTrainingConfig, "hypergrad", HYPERGRADS),
    ],
    ids=lambda v: getattr(v, "__name__", v if isinstance(v, str) else ""),
)
def test_config_choices_are_the_ops_registries(config: type[BaseModel], field: str, known: Any) -> None:
    assert set(get_args(config.model_fields[field].annotation)) == set(known)


def test_downstream_config_hands_every_retraining_field_it_offers_to_the_routes() -> None:
    """A launchpad setting of the per-budget routes must reach them, not only show in the form."""
    offered = [f for f in dataclasses.fields(RouteRetraining) if f.name in DownstreamConfig.model_fields]
    assert {f.name for f in offered} >= {"gan_epochs", "gan_psi", "ldm_guidance"}
    changed = {"gan_epochs": 3, "gan_psi": 0.55, "gan_match_pool": 3, "gan_ignore_uncertain": 0.2,
               "ldm_pretrain_steps": 7,
               "ldm_finetune_steps": 5, "ldm_batch": 2, "ldm_guidance": 2.5, "unlabelled_crops": 9,
               "ldm_label_free": "weights.pt"}  # fmt: skip
    assert set(changed) == {f.name for f in offered}, "a new shared field: give it a non-default value here"
    retraining = DownstreamConfig(**changed).retraining()
    assert {name: getattr(retraining, name) for name in changed} == changed
