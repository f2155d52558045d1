"""DISC's self-distillation (Sec. 2.3, Eq. 3): teach plain DDIM what the separated-conditions sampler draws.

SC sampling (``ops.diffusion.samplers.sc_sample``) costs K trajectories per image. DISC keeps only the final
separated latents z_0^k of a seed set (the paper: 20,000; the demo far fewer), and fine-tunes the ordinary
joint-mask model on ``z_0^mixed = Fuse(z_0^k, m)`` for **random** masks m with the ordinary noise-prediction loss:

    L_DISC = E ||eps - eps_theta(sqrt(a_t) z_0^mixed + sqrt(1 - a_t) eps, t, m)||^2          (Eq. 3)

so one DDIM run under m afterwards lands near what SC would have drawn. SD-DISC fine-tunes on these batches alone;
SD-DISC-CoTrain averages L_DISC with the ordinary L_LDM on real tiles (``LdmTrainer.train_step(..., cotrain=...)``).

Layout of a stored set: ``latents [S, K, C, h, w]`` float16 (class k's trajectory of seed s; half precision halves
the file, far below the noise the loss adds), ``seeds [S]``, and the teacher's DDIM steps and guidance.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ops.diffusion.denoiser import MaskConditionedUNet
from ops.diffusion.samplers import fuse, separated_latents

_FORMAT = 1  # bumped when the .npz layout changes
_KEYS = ("format", "seeds", "latents", "ddim_steps", "guidance")


@dataclass(frozen=True)
class SeparatedLatentSet:
    """The stored z_0^k of a seed set (see module docstring)."""

    seeds: np.ndarray  # int64 [S]
    latents: torch.Tensor  # float32 [S, K, C, h, w]
    ddim_steps: int  # DDIM steps of the teacher trajectories
    guidance: float  # classifier-free guidance of the teacher trajectories

    def __post_init__(self) -> None:
        if self.latents.ndim != 5 or self.latents.shape[0] != len(self.seeds) or len(self.seeds) == 0:
            raise ValueError(
                f"separated latents: expected [S, K, C, h, w] with S = {len(self.seeds)} seeds (S >= 1), "
                f"received {tuple(self.latents.shape)}"
            )

    @property
    def n_classes(self) -> int:
        return int(self.latents.shape[1])

    @classmethod
    def generate(
        cls, model: MaskConditionedUNet, seeds: np.ndarray, ddim_steps: int, guidance: float = 1.0, batch: int = 8
    ) -> SeparatedLatentSet:
        """Denoise every seed's noise once per class under the uniform one-class mask (the teacher is ``model``)."""
        seeds = np.asarray(seeds, np.int64)
        latents = separated_latents(model, seeds, ddim_steps, guidance, batch).float().cpu()
        return cls(seeds, latents, ddim_steps, float(guidance))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically (temp file in the same folder, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
        try:
            np.savez(
                tmp,
                format=_FORMAT,
                seeds=self.seeds,
                latents=self.latents.half().numpy(),
                ddim_steps=self.ddim_steps,
                guidance=self.guidance,
            )
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SeparatedLatentSet:
        """Read a stored set; a missing, damaged or foreign file is an error naming it and the fix."""
        path = Path(path)
        fix = "delete it and rematerialize ldm_model (the set is regenerated)"
        try:
            archive = np.load(path)
            if not isinstance(archive, np.lib.npyio.NpzFile):  # a plain .npy array, not a stored set
                raise ValueError("a single array, not an .npz archive")
            with archive as f:
                missing = [k for k in _KEYS if k not in f.files]
                if missing or int(f["format"]) != _FORMAT:
                    raise ValueError(f"lacks {missing} or has format {f['format'] if 'format' in f.files else None}")
                return cls(
                    f["seeds"].astype(np.int64),
                    torch.from_numpy(f["latents"].astype(np.float32)),
                    int(f["ddim_steps"]),
                    float(f["guidance"]),
                )
        except FileNotFoundError as err:
            raise FileNotFoundError(f"separated latents {path} do not exist; {fix}") from err
        except (ValueError, OSError, KeyError) as err:
            raise ValueError(f"separated latents {path} are not a readable set ({err}); {fix}") from err


def fused_batch(latents: torch.Tensor, index: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Eq. 2 for a training batch: ``z_0^mixed_i = Fuse(latents[index_i], masks_i)``, ``[B, C, h, w]``.

    Args:
        latents: ``[S, K, C, h, w]`` stored separated latents.
        index: ``[B]`` which seed's latents each batch row uses.
        masks: ``[B, R, R]`` fully labelled class-id masks (any class 0..K-1 may appear).
    """
    b, k = len(index), latents.shape[1]
    owner = torch.arange(b).repeat_interleave(k)
    labels = torch.arange(k).repeat(b)
    return fuse(latents[index].flatten(0, 1), owner, labels, masks)


class DiscBatches:
    """An endless stream of DISC fine-tuning batches: stored separated latents fused under random bank masks.

    Each batch draws ``batch`` seeds of the set and ``batch`` fresh masks (``masks_for`` of random mask seeds, the
    mask bank's sampler), so the model sees z_0^k cut by masks it was never sampled under - what makes it learn
    to follow arbitrary layouts rather than memorise the set.

    Args:
        store: The separated latents.
        masks_for: ``seeds -> uint8 [n, R, R]`` fully labelled masks (``MaskBank.sample``).
        batch: Rows per batch.
        seed: Seeds the draws; resuming at step s reseeds with ``seed + s`` for a reproducible stream.
    """

    def __init__(
        self,
        store: SeparatedLatentSet,
        masks_for: Callable[[np.ndarray], np.ndarray],
        batch: int,
        seed: int = 0,
    ) -> None:
        if batch < 1:
            raise ValueError(f"DISC batch: expected >= 1 rows, received {batch}")
        self.store, self.masks_for, self.batch = store, masks_for, batch
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_0^mixed [B, C, h, w], masks [B, R, R] long)``."""
        index = torch.from_numpy(self.rng.integers(len(self.store.seeds), size=self.batch))
        masks = torch.from_numpy(np.asarray(self.masks_for(self.rng.integers(0, 2**62, size=self.batch)))).long()
        if (masks >= self.store.n_classes).any():
            raise ValueError(
                f"DISC batch: masks hold class ids >= {self.store.n_classes} (the separated latents' classes) or "
                "unlabelled pixels; the mask bank must produce fully labelled masks of the LDM's classes"
            )
        return fused_batch(self.store.latents, index, masks), masks
