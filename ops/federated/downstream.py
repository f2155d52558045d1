"""The federated-GAN paper's downstream check as one function, shared by the ``federated_tile_check`` asset and
``bench/federated.py``: can a generator's class-conditional tiles stand in for real ones?

A tile classifier is trained per *arm* and scored on held-out real tiles (paper, Tables 3-5):

- ``real``: the real training tiles only (the baseline);
- ``generated``: only tiles sampled from the conditional generator, classes balanced;
- ``generated_real``: both together (the paper's "generated + real").

Every arm trains with the same recipe (``train_classifier``: the paper's crops, flips and affine up to 45°,
class-balanced batches), the same number of steps and seed, so the arms differ only in their data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ops.federated.classifier import ClassifierScores, evaluate, train_classifier
from ops.federated.networks import CondGenerator
from ops.federated.training import sample

ARMS = ("real", "generated", "generated_real")


@dataclass(frozen=True)
class TileSet:
    """Tiles at the generator's resolution and their classes."""

    images: np.ndarray  # uint8 [N, R, R, 3]
    labels: np.ndarray  # int64 [N]

    def counts(self, n_classes: int) -> list[int]:
        return np.bincount(self.labels, minlength=n_classes)[:n_classes].tolist()


@dataclass(frozen=True)
class CheckSettings:
    """How each arm's classifier is trained."""

    backbone: str = "cnn"  # classifier backbone: cnn or vit (ops.federated.networks.make_backbone)
    steps: int = 300  # optimiser steps per arm
    batch_size: int = 32  # tiles per step
    n_generated: int | None = None  # generated tiles per arm; None = as many as real training tiles
    seed: int = 0  # seeds the generated tiles and every classifier


def generated_tiles(G: CondGenerator, n: int, seed: int) -> TileSet:
    """``n`` tiles from the generator, classes in turn (0, 1, ..., 0, 1, ...), so every class is equally present."""
    labels = np.arange(n, dtype=np.int64) % G.cfg.n_classes
    return TileSet(sample(G, labels, seed=seed), labels)


def classifier_check(
    G: CondGenerator | None,
    train: TileSet,
    test: TileSet,
    n_classes: int,
    settings: CheckSettings = CheckSettings(),
    arms: tuple[str, ...] = ARMS,
) -> dict[str, ClassifierScores]:
    """Train one classifier per arm and score it on ``test`` (accuracy, F1, per-class recall).

    Args:
        G: The conditional generator (None only when ``arms`` is ``("real",)``).
        train: Real training tiles (slides the generator was trained on, never the test slides).
        test: Real tiles of held-out slides.
        n_classes: Tile classes.
        settings: Classifier recipe and how many generated tiles.
        arms: Which of :data:`ARMS` to run.

    Raises:
        ValueError: an unknown arm, a generator arm without a generator, an empty set, or tiles whose size differs
            from the generator's resolution.
    """
    unknown = sorted(set(arms) - set(ARMS))
    if unknown or not arms:
        raise ValueError(f"arms: expected a non-empty subset of {list(ARMS)}, received {list(arms)}")
    if not len(train.labels) or not len(test.labels):
        raise ValueError(
            f"expected real training and held-out tiles, received {len(train.labels)} and {len(test.labels)}; "
            "hold out at least one slide (training_tiles) and keep tiles on the others"
        )
    needs_g = [a for a in arms if a != "real"]
    if needs_g and G is None:
        raise ValueError(f"arms {needs_g} need a generator; pass the federated generator or run arms=('real',)")
    if G is not None and train.images.shape[1] != G.cfg.resolution:
        raise ValueError(
            f"real tiles are {train.images.shape[1]} px but the generator makes {G.cfg.resolution} px; read the "
            "tiles at the generator's resolution"
        )
    data: dict[str, TileSet] = {"real": train}
    if needs_g:
        gen = generated_tiles(G, settings.n_generated or len(train.labels), settings.seed + 99)
        data["generated"] = gen
        data["generated_real"] = TileSet(
            np.concatenate([gen.images, train.images]), np.concatenate([gen.labels, train.labels])
        )
    results = {}
    for arm in arms:
        model = train_classifier(
            data[arm].images,
            data[arm].labels,
            n_classes,
            settings.backbone,
            steps=settings.steps,
            batch_size=settings.batch_size,
            seed=settings.seed,
        )
        results[arm] = evaluate(model, test.images, test.labels, n_classes)
    return results
