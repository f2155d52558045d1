"""Label-free LDM pretraining: only training-slide tiles, every batch under the null condition, resumable, and the
command line writes a checkpoint with provenance that the LDM budget route continues from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ops.diffusion.autoencoder import AutoencoderConfig, build_autoencoder, save_autoencoder
from ops.diffusion.denoiser import LdmConfig, LdmTrainConfig, LdmTrainer, get_ldm_config
from ops.diffusion.label_free import main, pretrain_label_free, read_label_free, train_tiles
from ops.slides.tile_store import create_tile_array

AE = AutoencoderConfig(kind="kl", resolution=32, block_out_channels=(8, 16, 16), norm_num_groups=4)
LDM = LdmConfig(
    n_classes=3,
    resolution=32,
    latent_size=8,
    block_out_channels=(16, 32),
    attention_levels=(False, True),
    norm_num_groups=8,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Six 64-px tiles (four of training slides, two held out) and a small autoencoder with factor 4."""
    root = tmp_path_factory.mktemp("label_free")
    rng = np.random.default_rng(0)
    store = root / "tiles.zarr"
    arr = create_tile_array(store, 6, 64)
    for i in range(6):
        arr[i] = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    table = pd.DataFrame(
        {"store": str(store), "tile_index": range(6), "split": ["train"] * 4 + ["holdout"] * 2, "slide_id": "s"}
    )
    table.to_parquet(root / "tiles.parquet")
    torch.manual_seed(0)
    save_autoencoder(root / "ae.pt", build_autoencoder(AE), AE, 1.0)
    return {"root": root, "tiles": root / "tiles.parquet", "ae": root / "ae.pt"}


def test_only_training_slide_tiles_are_used_and_bad_tables_say_why(files, tmp_path) -> None:
    assert train_tiles(files["tiles"])["tile_index"].tolist() == [0, 1, 2, 3]
    with pytest.raises(FileNotFoundError, match="materialize `training_tiles`"):
        train_tiles(tmp_path / "missing.parquet")
    no_split = tmp_path / "no_split.parquet"
    pd.DataFrame({"store": ["x"], "tile_index": [0]}).to_parquet(no_split)
    with pytest.raises(ValueError, match="no 'split' column"):
        train_tiles(no_split)
    held_out = tmp_path / "held_out.parquet"
    pd.DataFrame({"store": ["x"], "tile_index": [0], "split": ["holdout"]}).to_parquet(held_out)
    with pytest.raises(ValueError, match="no tile of a training slide"):
        train_tiles(held_out)


def test_every_batch_is_under_the_null_condition_and_a_rerun_resumes(files, tmp_path) -> None:
    trainer = LdmTrainer(LDM, LdmTrainConfig(batch_size=2, warmup_steps=0))
    seen: list[torch.Tensor] = []
    step = trainer.train_step
    trainer.train_step = lambda z, m: seen.append(m) or step(z, m)  # type: ignore[method-assign]
    checkpoint = tmp_path / "lf.pt"
    pretrain_label_free(trainer, files["ae"], train_tiles(files["tiles"]), 6, checkpoint, checkpoint_every=2)
    assert trainer.step == 3 and checkpoint.is_file()
    assert len(seen) == 3 and all(m.shape == (2, 32, 32) and (m == 255).all() for m in seen)
    resumed = LdmTrainer.from_checkpoint(checkpoint)
    pretrain_label_free(resumed, files["ae"], train_tiles(files["tiles"]), 10, checkpoint)
    assert (resumed.step, resumed.images_seen) == (5, 10)


def test_the_command_writes_weights_with_provenance_that_the_budget_route_reads(files, tmp_path) -> None:
    checkpoint = tmp_path / "run" / "lf.pt"
    ae64 = AutoencoderConfig(kind="kl", resolution=64, block_out_channels=(8, 16, 16), norm_num_groups=4)
    save_autoencoder(tmp_path / "ae64.pt", build_autoencoder(ae64), ae64, 1.0)
    args = ["--tiles", str(files["tiles"]), "--autoencoder", str(tmp_path / "ae64.pt")]
    main([*args, "--checkpoint", str(checkpoint), "--kimg", "0.004", "--batch-size", "2"])
    record = json.loads(checkpoint.with_suffix(".json").read_text())
    assert (record["images_seen"], record["steps"]) == (4, 2) and "--kimg 0.004" in record["command"]
    assert record["machine"]["torch_threads"] == 1
    demo = get_ldm_config("demo", 6)
    weights = read_label_free(checkpoint, demo)
    assert set(weights) == set(LdmTrainer(demo, LdmTrainConfig()).ema.state_dict())
    with pytest.raises(ValueError, match="pretrain one for this architecture"):
        read_label_free(checkpoint, get_ldm_config("demo", 4))


def test_init_starts_a_new_run_from_given_weights_of_the_same_architecture(files, tmp_path) -> None:
    ae64 = AutoencoderConfig(kind="kl", resolution=64, block_out_channels=(8, 16, 16), norm_num_groups=4)
    save_autoencoder(tmp_path / "ae64.pt", build_autoencoder(ae64), ae64, 1.0)
    args = ["--tiles", str(files["tiles"]), "--autoencoder", str(tmp_path / "ae64.pt"), "--batch-size", "2"]
    first = tmp_path / "first.pt"
    main([*args, "--checkpoint", str(first), "--kimg", "0.002", "--seed", "1"])
    demo = get_ldm_config("demo", 6)
    start = read_label_free(first, demo)
    seeded = tmp_path / "seeded.pt"
    main([*args, "--checkpoint", str(seeded), "--kimg", "0.002", "--init", str(first)])
    record = json.loads(seeded.with_suffix(".json").read_text())
    assert record["init"] == str(first.resolve()) and (record["images_seen"], record["steps"]) == (2, 1)
    after = LdmTrainer.from_checkpoint(seeded)
    assert after.step == 1
    # One warm-up step moves the weights a little from the init; a new run (seed 0) starts far from it (seed 1).
    fresh = LdmTrainer(demo, LdmTrainConfig()).ema.state_dict()
    ema = after.ema.state_dict()
    near = sum(float((ema[k] - start[k]).square().sum()) for k in start)
    far = sum(float((fresh[k] - start[k]).square().sum()) for k in start)
    assert near < 1e-3 * far
    with pytest.raises(SystemExit, match="--init: .*first.pt.*drop --init"):
        main(
            [*args, "--checkpoint", str(tmp_path / "x.pt"), "--kimg", "0.002", "--init", str(first), "--n-classes", "4"]
        )
