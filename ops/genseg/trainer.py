"""GenSeg's multi-level optimisation: generator weights G, segmenter S and generator architecture A, in turn.

GenSeg (Xie et al., Nat. Commun. 2025) trains the mask-to-image generator *for* the segmenter:

    min_A  L_val( S*(A) )                                  (III: architecture, on real validation pairs)
    s.t.   S*(A) = argmin_S  L_seg(S, real) + γ·L_seg(S, G*(A)(aug. masks))   (II: segmenter)
           G*(A) = argmin_G  L_gan(G, A)                    (I: generator weights)

and approximates each argmin by one gradient step per iteration, as DARTS does. One :meth:`GenSegTrainer.train_step`:

I.   **G** ← pix2pix on the labelled pairs: the conditional PatchGAN D sees (mask, real image) vs (mask, G(mask)),
     G minimises ``adv + λ·L1(G(mask), image)`` (λ = 100). With ``unlabelled_disc`` an unconditional PatchGAN D_u
     also sees unlabelled kept tiles vs G's images of *augmented* masks, so appearance is learned from every tile,
     not only from the N labelled crops.
II.  **S** ← ``L_seg(S, real) + γ·L_seg(S, generated)`` on the real batch and a batch freshly generated from augmented
     masks (γ = 1).
III. **A** ← ``∇_A L_val(S')`` with ``S' = S − ξ·∇_S L_train(S, G_A)``: the validation loss (real crops held apart from
     S's training crops) after one unrolled segmenter step, differentiated through that step into the generator's
     architecture (:func:`hypergradient`). ``search=False`` skips stage III (plain pix2pix, A fixed and uniform).

Why second order: ``L_val`` does not depend on A directly (the validation pairs are real), so DARTS's first-order
approximation is exactly zero — the mistake of the paper summary's listing. Only the mixed term
``−ξ·∇²_{A,S} L_train · ∇_{S'} L_val`` carries the signal. :func:`hypergradient` computes it **exactly** by
double back-propagation (``torch.func.functional_call`` runs S on the unrolled weights ``S'``, which stay a function of
A; autograd differentiates through the inner gradient, ``create_graph=True``). That is the default because it is
exact (a test matches it to numerical differentiation of ``L_val(S'(A))``) and has no step ε to tune. It costs more
than DARTS's finite difference on a CPU: one step of batch 8 measured 3.10 s exact vs 2.67 s finite difference vs
1.50 s without stage III (``small`` preset, one thread, shared 2-core machine; ``demo`` preset 7.79 / 4.76 / 4.97 s
under heavier load). ``hypergrad="finite_difference"`` (DARTS Eq. 8, central difference with
``ε = 0.01 / ‖∇_{S'} L_val‖``) stays for large generators, where the double backward's memory is the
limit. The paper also unrolls G one step; we differentiate through G's forward at its current weights (the brief's
formulation), which is where A acts.

The segmenter is ``ops.evaluation.segmenter``'s U-Net with GroupNorm: BatchNorm's running statistics would be
mutated by the unrolled forward pass, GroupNorm has none, so ``S'`` is a pure function of the weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ops.common.config_dict import DictConfig
from ops.common.device import pick_device
from ops.common.file_io import CheckpointError, atomic_torch_save, half_state, read_torch_file
from ops.common.provenance import read_provenance, write_provenance
from ops.evaluation.losses import LOSSES, segmentation_loss
from ops.evaluation.segmenter import build_segmenter
from ops.genseg.augment import MaskAugmentConfig, augment_masks
from ops.genseg.networks import GenSegConfig, PatchDiscriminator, SearchableGenerator, mask_onehot

CHECKPOINT_FORMAT = "histofactory.genseg-trainer/1"
PRETRAINED_FORMAT = "histofactory.genseg-pretrained/1"
NETWORKS = ("generator", "disc", "disc_u", "segmenter")  # what shipped weights carry (no optimiser state)
HYPERGRADS = ("exact", "finite_difference")

# ----------------------------------------------------------------------------------------------------------------
# Configuration.


@dataclass(frozen=True)
class GenSegTrainConfig(DictConfig):
    """Optimisation of the three levels (the architecture lives in ``GenSegConfig``)."""

    batch_size: int = 8  # labelled pairs per step (and as many generated, validation and unlabelled crops)
    # Adam on G and on D, D_u. pix2pix uses 2e-4 over ~200 epochs (the paper presets keep it); in CPU-minute runs
    # 1e-3 measured better: fidelity 0.078 -> 0.291 after 100 steps (small preset, N = 4 demo crops, no search).
    lr_g: float = 1e-3
    lr_d: float = 1e-3
    lr_s: float = 1e-3  # Adam on the segmenter
    # Adam on A. DARTS uses 3e-4 over ~20k steps; our runs are a few hundred steps, at which 3e-4 moves α by < 0.1.
    lr_a: float = 3e-3
    a_weight_decay: float = 1e-3  # DARTS's weight decay on A
    xi: float = 0.01  # learning rate of the unrolled (virtual) SGD step of S in stage III
    lambda_l1: float = 100.0  # pix2pix's L1 weight
    gamma: float = 1.0  # weight of the generated pairs in S's loss (GenSeg: 1)
    search: bool = True  # stage III on; False = plain pix2pix with the fixed uniform A (the ablation)
    hypergrad: str = "exact"  # "exact" (double backward) | "finite_difference" (DARTS Eq. 8)
    fd_eps: float = 0.01  # finite_difference: ε = fd_eps / ‖∇_{S'} L_val‖ (DARTS)
    unlabelled_disc: bool = True  # unconditional D_u on unlabelled tiles vs G's images of augmented masks
    unlabelled_weight: float = 1.0  # weight of D_u's adversarial term in G's loss
    pretrain_steps: int = 0  # first steps train only G against D_u on unlabelled tiles (appearance), then MLO
    seg_base_channels: int = 8  # width of the segmenter S
    seg_loss: str = "ce"  # "ce" | "dice_ce" (ops.evaluation.losses)
    seed: int = 0  # seeds initialisation, noise and mask augmentation

    def __post_init__(self) -> None:
        for name in ("lr_g", "lr_d", "lr_s", "lr_a", "xi", "fd_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"GenSegTrainConfig.{name}: expected > 0, received {getattr(self, name)!r}")
        if self.batch_size < 1 or self.pretrain_steps < 0:
            raise ValueError(
                f"GenSegTrainConfig: expected batch_size >= 1 and pretrain_steps >= 0, received "
                f"{self.batch_size}, {self.pretrain_steps}"
            )
        if self.lambda_l1 < 0 or self.gamma < 0 or self.unlabelled_weight < 0:
            raise ValueError("GenSegTrainConfig: lambda_l1, gamma and unlabelled_weight must be >= 0")
        if self.hypergrad not in HYPERGRADS:
            raise ValueError(f"GenSegTrainConfig.hypergrad: expected one of {HYPERGRADS}, received {self.hypergrad!r}")
        if self.seg_loss not in LOSSES:
            raise ValueError(f"GenSegTrainConfig.seg_loss: expected one of {LOSSES}, received {self.seg_loss!r}")


# ----------------------------------------------------------------------------------------------------------------
# Stage III: the hypergradient of the validation loss with respect to A.

Pairs = tuple[torch.Tensor, torch.Tensor]  # (float images [B, 3, R, R] in [-1, 1], int64 masks [B, R, R])


def hypergradient(
    segmenter: nn.Module,  # S (its current weights are the point the virtual step starts from)
    generator: SearchableGenerator,  # G_A; only A receives the gradient
    real: Pairs,  # S's labelled training batch
    gen_masks: torch.Tensor,  # int64 [B, R, R] augmented masks the generated batch is painted from
    noise: torch.Tensor | None,  # the generator's noise for those masks
    val: Pairs,  # real validation pairs, held apart from S's training crops
    xi: float,  # learning rate of the virtual SGD step
    gamma: float = 1.0,  # weight of the generated pairs in L_train
    loss: str = "ce",  # segmentation loss kind
    method: str = "exact",  # "exact" | "finite_difference"
    eps: float = 0.01,  # finite_difference: ε = eps / ‖∇_{S'} L_val‖
) -> tuple[list[torch.Tensor], float]:
    """``∇_A L_val(S − ξ·∇_S L_train(S, G_A))`` (one tensor per cell's ``α``) and the value ``L_val(S')``.

    See the module docstring for the formulation and for why ``exact`` is the default.
    """
    if method not in HYPERGRADS:
        raise ValueError(f"hypergradient: method must be one of {HYPERGRADS}, received {method!r}")
    arch = generator.arch_parameters()
    params = dict(segmenter.named_parameters())

    def seg(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return segmentation_loss(functional_call(segmenter, p, (x,)), y, loss)

    def grads(value: torch.Tensor, wrt: Sequence[torch.Tensor], graph: bool = False) -> list[torch.Tensor]:
        found = torch.autograd.grad(value, list(wrt), create_graph=graph, allow_unused=True)
        return [torch.zeros_like(w) if g is None else g for w, g in zip(wrt, found, strict=True)]

    g_real = grads(seg(params, *real), params.values())  # does not depend on A: no graph needed
    if method == "exact":
        x_gen = generator.paint(gen_masks, noise)  # a function of A
        g_gen = grads(seg(params, x_gen, gen_masks), params.values(), graph=True)
        unrolled = {
            n: p.detach() - xi * (gr + gamma * gg) for (n, p), gr, gg in zip(params.items(), g_real, g_gen, strict=True)
        }
        l_val = seg(unrolled, *val)
        return grads(l_val, arch), float(l_val.detach())
    # DARTS Eq. 8: -ξ · (∇_A L_train(S+) − ∇_A L_train(S−)) / 2ε with S± = S ± ε·∇_{S'} L_val(S').
    with torch.no_grad():
        x_gen = generator.paint(gen_masks, noise)
    g_gen = grads(seg(params, x_gen, gen_masks), params.values())
    unrolled = {
        n: (p.detach() - xi * (gr + gamma * gg)).requires_grad_()
        for (n, p), gr, gg in zip(params.items(), g_real, g_gen, strict=True)
    }
    l_val = seg(unrolled, *val)
    v = grads(l_val, list(unrolled.values()))
    step = eps / torch.sqrt(sum((g * g).sum() for g in v)).clamp_min(1e-12)

    def arch_grad(sign: float) -> list[torch.Tensor]:
        shifted = {n: p.detach() + sign * step * g for (n, p), g in zip(params.items(), v, strict=True)}
        return grads(gamma * seg(shifted, generator.paint(gen_masks, noise), gen_masks), arch)

    plus, minus = arch_grad(1.0), arch_grad(-1.0)
    return [-xi * (p - m) / (2 * step) for p, m in zip(plus, minus, strict=True)], float(l_val.detach())


# ----------------------------------------------------------------------------------------------------------------
# The trainer.


def _bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1.0 if real else 0.0))


class GenSegTrainer:
    """G, D, D_u, S and their optimisers, advanced one minibatch at a time by :meth:`train_step`.

    Attributes:
        step: minibatches trained so far (pre-training steps included).
        images_seen: labelled pairs consumed so far (unlabelled tiles during pre-training).
    """

    def __init__(
        self,
        cfg: GenSegConfig,
        train_cfg: GenSegTrainConfig,
        augment_cfg: MaskAugmentConfig | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.cfg, self.train_cfg = cfg, train_cfg
        self.augment_cfg = augment_cfg or MaskAugmentConfig()
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        k = cfg.n_classes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(train_cfg.seed)
            self.generator = SearchableGenerator(cfg).to(self.device)
            self.disc = PatchDiscriminator(k + 3, cfg.disc_channels, cfg.disc_layers).to(self.device)
            self.disc_u = (
                PatchDiscriminator(3, cfg.disc_channels, cfg.disc_layers).to(self.device)
                if train_cfg.unlabelled_disc
                else None
            )
            self.segmenter = build_segmenter(k, train_cfg.seg_base_channels, norm="group").to(self.device)
        betas = (0.5, 0.999)
        self.opt_g = torch.optim.Adam(self.generator.weight_parameters(), lr=train_cfg.lr_g, betas=betas)
        d_params = [*self.disc.parameters(), *(self.disc_u.parameters() if self.disc_u else [])]
        self.opt_d = torch.optim.Adam(d_params, lr=train_cfg.lr_d, betas=betas)
        self.opt_s = torch.optim.Adam(self.segmenter.parameters(), lr=train_cfg.lr_s)
        self.opt_a = torch.optim.Adam(
            self.generator.arch_parameters(), lr=train_cfg.lr_a, betas=betas, weight_decay=train_cfg.a_weight_decay
        )
        self.gen = torch.Generator("cpu").manual_seed(train_cfg.seed)  # noise
        self.rng = np.random.default_rng(train_cfg.seed)  # mask augmentation
        self.step = 0
        self.images_seen = 0

    # -- helpers ----------------------------------------------------------------------------------------------

    def _noise(self, n: int) -> torch.Tensor | None:
        nz, r = self.cfg.noise_channels, self.cfg.resolution
        return torch.randn((n, nz, r, r), generator=self.gen).to(self.device) if nz else None

    def augmented_masks(self, masks: torch.Tensor, n: int) -> torch.Tensor:
        """``n`` augmented masks (int64 ``[n, R, R]``) from the labelled batch's masks (rotation, flip, scale)."""
        source = masks.cpu().numpy().astype(np.uint8)
        out = augment_masks(source, n, self.rng, self.augment_cfg, self.cfg.n_classes)
        return torch.from_numpy(out).long().to(self.device)

    def _set_arch_grad(self, on: bool) -> None:
        for a in self.generator.arch_parameters():
            a.requires_grad_(on)

    # -- one step ---------------------------------------------------------------------------------------------

    def train_step(
        self,
        x: torch.Tensor,  # float [B, 3, R, R] labelled images in [-1, 1]
        y: torch.Tensor,  # int64 [B, R, R] their masks (255 = unannotated)
        val_x: torch.Tensor,  # float [V, 3, R, R] validation images (held apart from S's crops)
        val_y: torch.Tensor,  # int64 [V, R, R]
        unl_x: torch.Tensor | None = None,  # float [U, 3, R, R] unlabelled tiles (needed with unlabelled_disc)
    ) -> dict[str, float]:
        """One iteration of stages I, II and III (only the appearance part of I while pre-training)."""
        r, tc = self.cfg.resolution, self.train_cfg
        assert x.ndim == 4 and x.shape[1:] == (3, r, r) and y.shape == (x.shape[0], r, r), (
            f"expected images [B, 3, {r}, {r}] and masks [B, {r}, {r}], received {tuple(x.shape)}, {tuple(y.shape)}"
        )
        if self.disc_u is not None and unl_x is None:
            raise ValueError(
                "unlabelled_disc is on but no unlabelled tiles were passed (unl_x); pass them or turn it off"
            )
        x, y, val_x, val_y = (t.to(self.device) for t in (x, y, val_x, val_y))
        unl_x = unl_x.to(self.device) if unl_x is not None else None
        b = x.shape[0]
        self.generator.train()
        self.segmenter.train()
        self._set_arch_grad(False)  # A moves only in stage III
        if self.step < tc.pretrain_steps:
            stats = self._appearance_step(y, unl_x)
        else:
            stats = self._gan_step(x, y, unl_x)
            stats |= self._segmenter_step(x, y)
            if tc.search:
                stats |= self._architecture_step(x, y, val_x, val_y)
        self.step += 1
        self.images_seen += b
        return stats

    def _appearance_step(self, y: torch.Tensor, unl_x: torch.Tensor | None) -> dict[str, float]:
        """Pre-training: G against D_u only, on unlabelled tiles (no pairs, no L1)."""
        if self.disc_u is None or unl_x is None:
            raise ValueError("pretrain_steps > 0 needs unlabelled_disc on and unlabelled tiles")
        fake = self.generator.paint(self.augmented_masks(y, unl_x.shape[0]), self._noise(unl_x.shape[0]))
        loss_d = 0.5 * (_bce(self.disc_u(unl_x), True) + _bce(self.disc_u(fake.detach()), False))
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        loss_g = _bce(self.disc_u(fake), True)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        return {"du_loss": float(loss_d.detach()), "g_unlabelled": float(loss_g.detach())}

    def _gan_step(self, x: torch.Tensor, y: torch.Tensor, unl_x: torch.Tensor | None) -> dict[str, float]:
        """Stage I: conditional PatchGAN + λ·L1 on the labelled pairs (+ D_u on unlabelled tiles)."""
        tc, b = self.train_cfg, x.shape[0]
        cond = mask_onehot(y, self.cfg.n_classes)
        fake = self.generator(cond, self._noise(b))
        loss_d = 0.5 * (
            _bce(self.disc(torch.cat([cond, x], 1)), True) + _bce(self.disc(torch.cat([cond, fake.detach()], 1)), False)
        )
        stats: dict[str, float] = {"d_loss": float(loss_d.detach())}
        fake_u = None
        if self.disc_u is not None:
            fake_u = self.generator.paint(self.augmented_masks(y, unl_x.shape[0]), self._noise(unl_x.shape[0]))
            loss_du = 0.5 * (_bce(self.disc_u(unl_x), True) + _bce(self.disc_u(fake_u.detach()), False))
            loss_d = loss_d + loss_du
            stats["du_loss"] = float(loss_du.detach())
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()

        adv = _bce(self.disc(torch.cat([cond, fake], 1)), True)
        l1 = F.l1_loss(fake, x)
        loss_g = adv + tc.lambda_l1 * l1
        if fake_u is not None:
            g_unl = _bce(self.disc_u(fake_u), True)
            loss_g = loss_g + tc.unlabelled_weight * g_unl
            stats["g_unlabelled"] = float(g_unl.detach())
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        return stats | {"g_adv": float(adv.detach()), "g_l1": float(l1.detach())}

    def _segmenter_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Stage II: S on the real batch plus γ times a batch freshly generated from augmented masks."""
        tc = self.train_cfg
        masks = self.augmented_masks(y, x.shape[0])
        with torch.no_grad():
            x_gen = self.generator.paint(masks, self._noise(x.shape[0]))
        l_real = segmentation_loss(self.segmenter(x), y, tc.seg_loss)
        l_gen = segmentation_loss(self.segmenter(x_gen), masks, tc.seg_loss)
        self.opt_s.zero_grad(set_to_none=True)
        (l_real + tc.gamma * l_gen).backward()
        self.opt_s.step()
        return {"s_real": float(l_real.detach()), "s_generated": float(l_gen.detach())}

    def _architecture_step(
        self, x: torch.Tensor, y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor
    ) -> dict[str, float]:
        """Stage III: A ← Adam step on the hypergradient of the validation loss."""
        tc = self.train_cfg
        masks = self.augmented_masks(y, x.shape[0])
        self._set_arch_grad(True)
        hyper, l_val = hypergradient(
            self.segmenter,
            self.generator,
            (x, y),
            masks,
            self._noise(x.shape[0]),
            (val_x, val_y),
            tc.xi,
            tc.gamma,
            tc.seg_loss,
            tc.hypergrad,
            tc.fd_eps,
        )
        self._set_arch_grad(False)
        for a, g in zip(self.generator.arch_parameters(), hyper, strict=True):
            a.grad = g.detach()
        self.opt_a.step()
        self.opt_a.zero_grad(set_to_none=True)
        return {"val_loss": l_val, "hypergrad_norm": float(torch.sqrt(sum((g * g).sum() for g in hyper)))}

    # -- checkpoints ------------------------------------------------------------------------------------------

    def save_checkpoint(self, path: str | os.PathLike[str]) -> Path:
        """Everything needed to resume (weights, A, optimisers, counters, RNG states), written atomically."""
        payload = {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "train_config": self.train_cfg.to_dict(),
            "augment_config": self.augment_cfg.to_dict(),
            "generator": self.generator.state_dict(),
            "disc": self.disc.state_dict(),
            "disc_u": self.disc_u.state_dict() if self.disc_u else {},
            "segmenter": self.segmenter.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "opt_s": self.opt_s.state_dict(),
            "opt_a": self.opt_a.state_dict(),
            "step": self.step,
            "images_seen": self.images_seen,
            "torch_rng": self.gen.get_state(),
            "numpy_rng": json.dumps(self.rng.bit_generator.state),  # 128-bit ints: JSON keeps weights_only loading
        }
        return atomic_torch_save(payload, path)

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Restore a checkpoint of the same configuration."""
        payload = read_trainer_checkpoint(path)
        if GenSegConfig.from_dict(payload["config"]) != self.cfg:
            raise CheckpointError(f"GenSeg checkpoint {path} was made for another architecture; delete it to retrain")
        try:
            self.generator.load_state_dict(payload["generator"])
            self.disc.load_state_dict(payload["disc"])
            if self.disc_u is not None:
                self.disc_u.load_state_dict(payload["disc_u"])
            self.segmenter.load_state_dict(payload["segmenter"])
            for name in ("opt_g", "opt_d", "opt_s", "opt_a"):
                getattr(self, name).load_state_dict(payload[name])
        except (RuntimeError, KeyError, ValueError) as err:
            raise CheckpointError(f"GenSeg checkpoint {path} does not fit its config ({err}); delete it") from err
        self.step, self.images_seen = int(payload["step"]), int(payload["images_seen"])
        self.gen.set_state(payload["torch_rng"])
        self.rng.bit_generator.state = json.loads(payload["numpy_rng"])

    def load_pretrained(self, path: str | os.PathLike[str]) -> None:
        """Start from shipped weights (:func:`export_pretrained_genseg`): G with its architecture A, both
        discriminators and S; optimisers, counters and random streams stay fresh, so a fine-tune is a new run."""
        payload = read_torch_file(
            path, (PRETRAINED_FORMAT,), ("config", *NETWORKS), "pretrained GenSeg weights", "re-export them"
        )
        found = GenSegConfig.from_dict(payload["config"])
        if found != self.cfg:
            raise CheckpointError(
                f"pretrained GenSeg weights {path} were made for {found}, this run builds {self.cfg}; pick the "
                "matching preset / class map, or set from_scratch: true"
            )
        try:
            self.generator.load_state_dict(payload["generator"])
            self.disc.load_state_dict(payload["disc"])
            if self.disc_u is not None and payload["disc_u"]:
                self.disc_u.load_state_dict(payload["disc_u"])
            self.segmenter.load_state_dict(payload["segmenter"])
        except RuntimeError as err:
            raise CheckpointError(f"pretrained GenSeg weights {path} do not fit their config ({err})") from err

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> GenSegTrainer:
        """Rebuild a trainer from the configs stored in the checkpoint and restore its state, to resume."""
        payload = read_trainer_checkpoint(path)
        trainer = cls(
            GenSegConfig.from_dict(payload["config"]),
            GenSegTrainConfig.from_dict(payload["train_config"]),
            MaskAugmentConfig.from_dict(payload["augment_config"]),
            device,
        )
        trainer.load_checkpoint(path)
        return trainer


def read_trainer_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and validate a trainer checkpoint (``weights_only=True``); a clear error naming the file otherwise."""
    return read_torch_file(
        path,
        (CHECKPOINT_FORMAT,),
        ("config", "train_config", "augment_config", "generator"),
        "GenSeg checkpoint",
        "delete it to retrain",
        "train genseg_model first or fix the path",
    )


def export_pretrained_genseg(
    checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], provenance: dict[str, Any] | None = None
) -> Path:
    """A shippable copy of a trainer checkpoint: configs and the four networks in float16, no optimiser state.

    ``GenSegTrainer.load_pretrained`` reads it (the ``genseg_model`` asset fine-tunes from it). ``<out>.json``
    records how it was made: the training run's provenance beside the checkpoint, its step and images seen,
    ``provenance`` (e.g. the commands) and the machine.
    """
    payload = read_trainer_checkpoint(checkpoint)
    slim = {
        "format": PRETRAINED_FORMAT,
        "config": payload["config"],
        "train_config": payload["train_config"],
        "augment_config": payload["augment_config"],
        **{name: half_state(payload[name]) for name in NETWORKS},
        "step": payload["step"],
        "images_seen": payload["images_seen"],
    }
    path = atomic_torch_save(slim, out)
    write_provenance(
        path,
        {
            "training": read_provenance(checkpoint),
            "source_checkpoint": str(Path(checkpoint).resolve()),
            "step": int(payload["step"]),
            "images_seen": int(payload["images_seen"]),
            **(provenance or {}),
        },
    )
    return path
