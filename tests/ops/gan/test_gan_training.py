"""Tests for ops.gan.trainer and ops.common.device: steps, learning signal, checkpoints, resume, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ops.common.device import pick_device
from ops.gan.networks import GanConfig
from ops.gan.trainer import CheckpointError, GanTrainer, TrainConfig, load_generator, read_checkpoint

TINY = GanConfig(resolution=16, z_dim=16, w_dim=16, mapping_layers=2, channel_base=256, channel_max=32)
TARGET = torch.tensor([0.8, -0.8, 0.6])  # the colour of every real tile, in [-1, 1]


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread() -> Iterator[None]:
    """Tiny networks gain nothing from 2 threads, and on shared busy cores OpenMP threads wait on each other
    (10× slowdowns seen); run this module single-threaded and restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _reals(n: int = 8, res: int = 16) -> torch.Tensor:
    return TARGET.reshape(1, 3, 1, 1).expand(n, 3, res, res).contiguous()


def _trainer(seed: int = 0, cfg: GanConfig = TINY, **train: object) -> GanTrainer:
    return GanTrainer(cfg, TrainConfig(batch_size=8, seed=seed, **train), device="cpu")


def _z(n: int = 4, seed: int = 123) -> torch.Tensor:
    return torch.randn(n, TINY.z_dim, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- steps
def test_train_step_reports_losses_and_counts() -> None:
    trainer = _trainer()
    stats = trainer.train_step(_reals())
    assert {"loss_G", "loss_D", "r1", "ada_p", "d_real_sign"} <= set(stats)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert stats["r1"] > 0  # step 0 is an R1 step (lazy interval 16)
    assert -1 <= stats["d_real_sign"] <= 1
    trainer.train_step(_reals())
    assert (trainer.step, trainer.images_seen) == (2, 16)


def test_training_with_active_augmentation_runs_r1_through_the_pipe() -> None:
    trainer = _trainer(r1_interval=1)
    assert trainer.augment_pipe is not None
    trainer.augment_pipe.p.fill_(0.5)
    for _ in range(2):
        stats = trainer.train_step(_reals())
    assert torch.isfinite(torch.tensor(list(stats.values()))).all()
    assert stats["ada_p"] == pytest.approx(0.5)  # interval 4 not reached yet


def test_trainer_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(7)
    before = torch.get_rng_state()
    trainer = _trainer()
    trainer.train_step(_reals())
    assert torch.equal(torch.get_rng_state(), before)


def test_bad_real_batch_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"expected a float tensor \[N, 3, 16, 16\]"):
        _trainer().train_step(torch.zeros(8, 3, 32, 32))


def test_bad_train_config_names_the_option() -> None:
    with pytest.raises(ValueError, match="TrainConfig.batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="augment_preset"):
        TrainConfig(augment_preset="everything")
    assert TrainConfig.from_dict(TrainConfig(seed=3).to_dict()) == TrainConfig(seed=3)


def test_short_training_moves_samples_toward_the_tile_colour() -> None:
    """The learning signal flows: after 30 steps on single-colour tiles, samples take that colour."""
    trainer = _trainer(seed=0, augment=False)

    def distance() -> float:
        with torch.no_grad():
            mean_colour = trainer.G_ema(_z(n=64)).mean(dim=(0, 2, 3))
        return float((mean_colour - TARGET).norm())

    before = distance()
    for _ in range(30):
        trainer.train_step(_reals())
    after = distance()
    assert after < 0.5 * before, f"mean-colour distance {before:.3f} -> {after:.3f}"


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_gives_identical_generator(tmp_path: Path) -> None:
    trainer = _trainer()
    for _ in range(2):
        trainer.train_step(_reals())
    path = trainer.save_checkpoint(tmp_path / "gan" / "checkpoint.pt")
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temp file left
    G = load_generator(path, device="cpu")
    assert not G.training and not any(p.requires_grad for p in G.parameters())
    assert torch.equal(G(_z()), trainer.G_ema(_z()))
    payload = read_checkpoint(path)
    assert payload["gan_config"] == TINY.to_dict() and payload["step"] == 2


def test_resume_continues_step_counter_and_behaves_identically(tmp_path: Path) -> None:
    trainer = _trainer()
    for _ in range(3):
        trainer.train_step(_reals())
    path = trainer.save_checkpoint(tmp_path / "checkpoint.pt")
    resumed = GanTrainer.from_checkpoint(path, device="cpu")
    assert (resumed.step, resumed.images_seen) == (3, 24)
    assert resumed.ada is not None and trainer.ada is not None
    assert resumed.ada.state_dict() == trainer.ada.state_dict()
    for _ in range(2):
        expected = trainer.train_step(_reals())
        got = resumed.train_step(_reals())
        assert got == expected  # RNG, optimiser and ADA state restored: bit-identical continuation
    assert resumed.step == 5
    for a, b in zip(trainer.G.parameters(), resumed.G.parameters(), strict=True):
        assert torch.equal(a, b)


def test_truncated_checkpoint_raises_checkpoint_error_naming_the_file(tmp_path: Path) -> None:
    path = _trainer().save_checkpoint(tmp_path / "gan_step3.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="gan_step3.pt.*delete it or set from_scratch"):
        GanTrainer.from_checkpoint(path)
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="gan_step3.pt"):
        load_generator(path)


def test_missing_or_foreign_checkpoint_raises(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nothing.pt does not exist"):
        load_generator(tmp_path / "nothing.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt: expected format"):
        read_checkpoint(foreign)


def test_architecture_mismatch_raises_checkpoint_error(tmp_path: Path) -> None:
    path = _trainer().save_checkpoint(tmp_path / "small.pt")
    other = GanTrainer(GanConfig(**{**TINY.to_dict(), "channel_max": 16}), TrainConfig(batch_size=8))
    with pytest.raises(CheckpointError, match=r"small.pt was made for a different architecture: channel_max=32"):
        other.load_checkpoint(path)


# ---------------------------------------------------------------------------------------------- device
def test_pick_device() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device: expected one of"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="device='cuda' was requested but torch.cuda.is_available"):
            pick_device("cuda")


def test_resume_with_a_new_learning_rate_uses_the_new_one(tmp_path: Path) -> None:
    path = _trainer().save_checkpoint(tmp_path / "checkpoint.pt")
    trainer = GanTrainer(TINY, TrainConfig(batch_size=8, lr=1e-3), device="cpu")
    trainer.load_checkpoint(path)
    assert trainer.opt_G.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert trainer.opt_D.param_groups[0]["lr"] == pytest.approx(1e-3 * 16 / 17)  # lazy-R1 rescaling


def test_export_pretrained_is_small_and_fine_tunes(tmp_path):
    from ops.gan.loop import export_pretrained

    cfg = GanConfig(resolution=16, z_dim=16, w_dim=16, mapping_layers=1, channel_base=128, channel_max=16)
    trainer = GanTrainer(cfg, TrainConfig(batch_size=4), device="cpu")
    trainer.train_step(torch.rand(4, 3, 16, 16) * 2 - 1)
    full = trainer.save_checkpoint(tmp_path / "full.pt")
    slim = export_pretrained(full, tmp_path / "slim.pt")
    assert slim.stat().st_size < 0.6 * full.stat().st_size
    tuned = GanTrainer(cfg, TrainConfig(batch_size=4), device="cpu")
    tuned.load_checkpoint(slim)
    z = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(tuned.G_ema(z), trainer.G_ema(z), atol=2e-2, rtol=0)
    tuned.train_step(torch.rand(4, 3, 16, 16) * 2 - 1)  # optimisers restart cleanly
