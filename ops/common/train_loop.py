"""The one training-step loop around the GAN, autoencoder and LDM trainers: batches, checkpoints, logging hooks.

Every trainer exposes ``train_step(*batch)``, ``step``, ``images_seen`` and ``save_checkpoint(path)``, so one loop
serves all of them (``ops.gan.loop.fit`` feeds it real crops). A run is resumable:
it stops once ``total_images`` were seen *in total*, counting earlier runs restored from the checkpoint, and the
caller seeds the batch stream from the step it resumes at.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm


class Trainer(Protocol):
    step: int
    images_seen: int

    def train_step(self, *batch: Any) -> dict[str, float]: ...

    def save_checkpoint(self, path: str | Path) -> Path: ...


def fit_steps(
    trainer: Trainer,
    next_batch: Callable[[], tuple],
    total_images: int,
    checkpoint: str | Path,
    checkpoint_every: int = 100,
    log_every: int = 10,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    on_checkpoint: Callable[[Trainer], None] | None = None,
    desc: str = "training",
) -> Trainer:
    """Train until ``total_images`` were seen, checkpointing atomically every ``checkpoint_every`` steps and last.

    Args:
        trainer: A ``GanTrainer``, ``AutoencoderTrainer`` or ``LdmTrainer`` (anything with the protocol above).
        next_batch: Returns the next batch as the tuple ``train_step`` takes.
        total_images: Images to train on in total, across resumes.
        checkpoint: Checkpoint file (rewritten in place).
        checkpoint_every: Steps between checkpoints (and ``on_checkpoint`` calls).
        log_every: Steps between ``on_log(step, stats)`` calls; stats gain ``img_per_s``.
        on_log: Logging hook (MLflow metrics).
        on_checkpoint: Called after each checkpoint (sample grids, evaluation).
        desc: Progress-bar label.
    """
    if checkpoint_every < 1 or log_every < 1:
        raise ValueError(f"checkpoint_every and log_every must be >= 1, received {checkpoint_every}, {log_every}")
    start, seen_at_start = time.perf_counter(), trainer.images_seen
    with tqdm(
        total=total_images,
        initial=min(trainer.images_seen, total_images),
        desc=desc,
        unit="img",
        mininterval=5,
        leave=False,
    ) as bar:
        while trainer.images_seen < total_images:
            before = trainer.images_seen
            stats = trainer.train_step(*next_batch())
            bar.update(trainer.images_seen - before)
            last = trainer.images_seen >= total_images
            if on_log and (trainer.step % log_every == 0 or last):
                elapsed = max(time.perf_counter() - start, 1e-9)
                on_log(trainer.step, {**stats, "img_per_s": (trainer.images_seen - seen_at_start) / elapsed})
            if trainer.step % checkpoint_every == 0 or last:
                trainer.save_checkpoint(checkpoint)
                if on_checkpoint:
                    on_checkpoint(trainer)
    return trainer
