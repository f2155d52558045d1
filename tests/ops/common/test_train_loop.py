"""Tests for ops.common: the one training-step loop (resumable totals, checkpoints, logging) and atomic model files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ops.common.file_io import CheckpointError, atomic_torch_save, read_torch_file
from ops.common.train_loop import fit_steps


class CountingTrainer:
    """A trainer that sees ``batch`` images per step and records what the loop asked of it."""

    def __init__(self, batch: int = 4, step: int = 0) -> None:
        self.batch, self.step, self.images_seen, self.saved = batch, step, step * batch, []

    def train_step(self, x: int) -> dict[str, float]:
        self.step += 1
        self.images_seen += self.batch
        return {"loss": float(x)}

    def save_checkpoint(self, path: str | Path) -> Path:
        self.saved.append(self.step)
        return atomic_torch_save({"format": "counting", "step": self.step}, path)


def test_fit_steps_stops_at_the_total_and_checkpoints_last(tmp_path):
    trainer, logs = CountingTrainer(), []
    fit_steps(
        trainer,
        lambda: (1,),
        total_images=40,
        checkpoint=tmp_path / "c.pt",
        checkpoint_every=3,
        log_every=4,
        on_log=lambda step, stats: logs.append((step, stats)),
    )
    assert trainer.images_seen == 40 and trainer.step == 10
    assert trainer.saved == [3, 6, 9, 10], "every checkpoint_every steps, and at the end"
    assert [s for s, _ in logs] == [4, 8, 10]
    assert all(stats["img_per_s"] > 0 and stats["loss"] == 1.0 for _, stats in logs)
    assert torch.load(tmp_path / "c.pt", weights_only=True)["step"] == 10


def test_fit_steps_counts_images_from_earlier_runs(tmp_path):
    resumed = CountingTrainer(step=8)  # 32 images already seen before the restart
    fit_steps(resumed, lambda: (0,), total_images=40, checkpoint=tmp_path / "c.pt")
    assert resumed.step == 10, "a resumed run trains only the images still missing"
    with pytest.raises(ValueError, match="checkpoint_every and log_every must be >= 1"):
        fit_steps(resumed, lambda: (0,), total_images=80, checkpoint=tmp_path / "c.pt", checkpoint_every=0)


def test_model_files_are_read_strictly(tmp_path):
    path = atomic_torch_save({"format": "counting", "step": 3}, tmp_path / "m.pt")
    assert not list(tmp_path.glob(".*tmp*")), "no temp file is left beside the model"
    assert read_torch_file(path, ["counting"], ["step"], "test file", "retrain")["step"] == 3
    with pytest.raises(CheckpointError, match="does not exist; retrain"):
        read_torch_file(tmp_path / "none.pt", ["counting"], ["step"], "test file", "retrain")
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_torch_file(path, ["counting"], ["step"], "test file", "retrain")
