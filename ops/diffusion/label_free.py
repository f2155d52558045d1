"""Label-free pretraining of the mask-conditioned denoiser: every step through the null condition, on unlabelled
tissue crops of the training slides only.

Why a separate, long run: under the downstream benchmark's equal-label-budget rule (``ops.evaluation.budget_routes``)
the LDM route may learn its mask conditioning only from the budget's N crops. What it may learn from everything is
what tissue looks like, without any label (DiffInfinite's recipe: unlabelled tiles train the unconditional slot of
classifier-free guidance). A few hundred such steps per bench run leave a denoiser that paints blur; this run trains
the same architecture for tens of thousands of steps once, resumably, so the shipped
``resources/pretrained/ldm_demo_label_free.pt`` can start every budget's fine-tune. No mask of any kind is read:
the input is a tile table (the ``training_tiles`` asset's parquet; only rows with ``split == "train"``) and an
autoencoder trained on images only.

Run it (one torch thread, resumable: rerun the same command with a larger ``--kimg`` to continue)::

    python -m ops.diffusion.label_free --tiles data/training/tiles.parquet \
        --autoencoder resources/pretrained/autoencoder_demo.pt --checkpoint runs/label_free.pt --kimg 400

``--init <denoiser file>`` starts a new run from existing weights instead of random ones: a new autoencoder moves the
latents, and the shipped label-free denoiser carried over to them costs far less than pretraining anew.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from ops.common.device import pick_device
from ops.common.provenance import write_provenance
from ops.common.train_loop import fit_steps
from ops.diffusion.autoencoder import encode, load_autoencoder
from ops.diffusion.denoiser import (
    LdmConfig,
    LdmTrainConfig,
    LdmTrainer,
    get_ldm_config,
    read_ldm_checkpoint,
    unlabelled_masks,
)
from ops.slides.crops import TileCropSampler


def train_tiles(tile_table: str | os.PathLike[str]) -> pd.DataFrame:
    """The kept tiles of the training slides: the only images label-free pretraining may see."""
    path = Path(tile_table)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no tile table; materialize `training_tiles` and pass its tiles.parquet")
    tiles = pd.read_parquet(path)
    if "split" not in tiles.columns:
        raise ValueError(f"{path}: no 'split' column; pass the `training_tiles` asset's table (slide-level split)")
    train = tiles[tiles["split"] == "train"]
    if train.empty:
        raise ValueError(f"{path}: no tile of a training slide (split == 'train'); check the slide split")
    return train


def read_label_free(path: str | os.PathLike[str], cfg: LdmConfig) -> dict[str, torch.Tensor]:
    """The EMA weights of a label-free pretraining (``ops.diffusion.label_free``), checked against ``cfg``.

    Raises:
        ValueError: the file holds another architecture (names both and the fix).
    """
    payload = read_ldm_checkpoint(path)
    found = LdmConfig.from_dict(payload["config"])
    if found != cfg:
        raise ValueError(
            f"{path}: label-free denoiser for {found}, but the factory's LDM is {cfg}; pretrain one for this "
            "architecture (python -m ops.diffusion.label_free) or leave ldm_label_free unset"
        )
    return {k: v.float() for k, v in payload["ema"].items()}


def pretrain_label_free(
    trainer: LdmTrainer,
    autoencoder: str | os.PathLike[str],
    tiles: pd.DataFrame,
    total_images: int,
    checkpoint: str | os.PathLike[str],
    checkpoint_every: int = 500,
    seed: int = 0,
) -> LdmTrainer:
    """Train ``trainer`` until ``total_images`` latents were seen, each batch fresh crops under the null condition.

    The crop stream is seeded from ``seed`` and the step the trainer resumes at, so a resumed run goes on with new
    crops rather than repeating the first ones.
    """
    ae, _, scale = load_autoencoder(autoencoder, trainer.device)
    resolution = trainer.cfg.resolution
    crops = TileCropSampler(tiles, resolution, seed=seed * 1_000_003 + trainer.step)
    b = trainer.train_cfg.batch_size
    null = unlabelled_masks(b, resolution)

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        return encode(ae, crops.batch(b, trainer.device), scale), null

    return fit_steps(trainer, next_batch, total_images, checkpoint, checkpoint_every, desc="label-free LDM")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiles", required=True, help="tiles.parquet of the training_tiles asset")
    parser.add_argument("--autoencoder", required=True, help="autoencoder file (trained on images only)")
    parser.add_argument("--checkpoint", required=True, help="training checkpoint (resumed when it exists)")
    parser.add_argument("--kimg", type=float, required=True, help="thousands of latents to train on, across resumes")
    parser.add_argument("--preset", default="demo", help="LDM architecture preset (ops.diffusion.denoiser)")
    parser.add_argument("--n-classes", type=int, default=6, help="mask classes K of the fine-tunes to come")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--init", default=None, help="denoiser file a new run starts from (model and EMA); ignored when resuming"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    checkpoint = Path(args.checkpoint)
    if checkpoint.exists():
        trainer = LdmTrainer.from_checkpoint(checkpoint, device)
        print(f"resuming {checkpoint} at step {trainer.step} ({trainer.images_seen} latents seen)")
    else:
        cfg: LdmConfig = get_ldm_config(args.preset, args.n_classes)
        trainer = LdmTrainer(cfg, LdmTrainConfig(batch_size=args.batch_size, lr=args.lr, seed=args.seed), device)
        if args.init:
            try:
                weights = read_label_free(args.init, cfg)
            except ValueError as err:
                raise SystemExit(
                    f"--init: {err}. Pass the --preset and --n-classes the file was trained with, or drop --init"
                ) from err
            trainer.model.load_state_dict(weights)
            trainer.ema.load_state_dict(weights)
            print(f"new run from the weights of {args.init}")
    started = time.perf_counter()
    pretrain_label_free(
        trainer,
        args.autoencoder,
        train_tiles(args.tiles),
        int(args.kimg * 1000),
        checkpoint,
        args.checkpoint_every,
        args.seed,
    )
    write_provenance(
        checkpoint,
        {
            "what": "label-free LDM pretraining: null condition only, unlabelled crops of training-slide tiles",
            "command": "python -m ops.diffusion.label_free " + " ".join(argv or sys.argv[1:]),
            "tiles": str(Path(args.tiles).resolve()),
            "autoencoder": str(Path(args.autoencoder).resolve()),
            "init": str(Path(args.init).resolve()) if args.init else None,
            "images_seen": trainer.images_seen,
            "steps": trainer.step,
            "train_seconds": round(trainer.train_seconds, 1),
            "wall_seconds_this_call": round(time.perf_counter() - started, 1),
        },
    )


if __name__ == "__main__":
    main()
