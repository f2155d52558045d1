"""DatasetGAN / HDGAN pixel classifier: an ensemble of small MLPs on per-pixel generator features.

Each pixel's feature vector (the synthesis-block activations at that pixel, see ``ops/labelling/feature_store.py``) is
classified independently by ``M`` MLPs (DatasetGAN: 10). Their mean softmax is the label; their disagreement,
the generalised Jensen-Shannon divergence, flags pixels and whole images the ensemble is unsure about, which
DatasetGAN uses to drop the least reliable 10% of generated images.

Sections, bottom-up: configs → one MLP → ensemble (normalisation, training, prediction, save/load) → uncertainty.
Training consumes an iterable of ``(features, labels)`` minibatches (e.g. ``BatchStream``), so memory is bounded by
the batch; all members train on the same batch (one feature read for M models), and Poisson bootstrap weights per
member stand in for DatasetGAN's per-member shuffles to keep members diverse.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ops.common.file_io import atomic_torch_save

CHECKPOINT_FORMAT = "histofactory.pixel_ensemble"
CHECKPOINT_VERSION = 1
OPTIMIZERS = {"sgd": 1e-4, "adam": 1e-3}  # name -> default learning rate (HDGAN SGD; DatasetGAN Adam)

# ----------------------------------------------------------------------------------------------------------------
# Configs.


@dataclass(frozen=True)
class MLPConfig:
    """Shape of one member. Defaults are HDGAN's: dim -> 128 -> 32 -> K, ReLU + BatchNorm, dropout 0.3."""

    in_features: int  # features per pixel (sum of block channels; HDGAN 496)
    n_classes: int  # K output classes
    hidden: tuple[int, ...] = (128, 32)  # hidden layer widths
    dropout: float = 0.3  # after each hidden layer; 0 disables
    batch_norm: bool = True  # BatchNorm1d after each hidden ReLU (DatasetGAN/HDGAN order)

    def __post_init__(self) -> None:
        if self.in_features < 1 or self.n_classes < 2:
            raise ValueError(
                f"in_features must be >= 1 and n_classes >= 2, received {self.in_features}, {self.n_classes}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), received {self.dropout}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))


@dataclass(frozen=True)
class EnsembleConfig:
    """The saved model description: member shape and member count."""

    mlp: MLPConfig
    n_members: int = 10  # DatasetGAN: 10

    def __post_init__(self) -> None:
        if self.n_members < 1:
            raise ValueError(f"n_members must be >= 1, received {self.n_members}")

    def to_dict(self) -> dict[str, Any]:
        return {"mlp": asdict(self.mlp), "n_members": self.n_members}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnsembleConfig:
        return cls(mlp=MLPConfig(**d["mlp"]), n_members=int(d["n_members"]))


@dataclass(frozen=True)
class TrainConfig:
    """How to train. No field is overridden by a constant anywhere."""

    optimizer: str = "adam"  # "sgd" (HDGAN) or "adam" (DatasetGAN)
    lr: float | None = None  # None: 1e-4 for sgd, 1e-3 for adam
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    label_smoothing: float = 0.0  # HDGAN 0.1
    class_weights: tuple[float, ...] | None = None  # CE weight per class; None = equal
    ignore_index: int = 255  # label value excluded from the loss
    max_epochs: int = 10  # passes over the train stream (HDGAN 25: the paper preset sets it)
    patience: int = 3  # epochs without validation improvement before a member stops; 0 = off
    min_delta: float = 1e-4  # improvement smaller than this does not reset patience
    bootstrap: bool = True  # Poisson(1) per-pixel weights per member, for diversity
    norm_pixels: int = 100_000  # pixels used to estimate per-feature mean/std
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; known: {sorted(OPTIMIZERS)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), received {self.label_smoothing}")
        if self.max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, received {self.max_epochs}")


@dataclass
class ProgressEvent:
    """What the training callback receives (logging, MLflow, Dagster context.log — the caller decides)."""

    stage: str  # "normalisation" | "epoch" | "done"
    epoch: int = 0
    train_loss: list[float] = field(default_factory=list)  # per member, epoch mean (NaN: member stopped)
    val_loss: list[float] | None = None  # per member
    active_members: int = 0
    pixels_seen: int = 0


@dataclass
class FitResult:
    """Summary of :meth:`PixelEnsemble.fit`, ready for asset metadata."""

    epochs: int
    best_epoch: list[int]  # per member (-1: no validation stream, last epoch kept)
    best_val_loss: list[float] | None
    history: list[ProgressEvent]


Batches = Iterable[tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]]
Callback = Callable[[ProgressEvent], None]

# ----------------------------------------------------------------------------------------------------------------
# One member.


class PixelMLP(nn.Module):
    """``[n, in_features]`` normalised features -> ``[n, n_classes]`` logits."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = config.in_features
        for hidden in config.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if config.batch_norm:
                layers.append(nn.BatchNorm1d(hidden))
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            width = hidden
        layers.append(nn.Linear(width, config.n_classes))
        self.net = nn.Sequential(*layers)
        self.config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 2 and x.shape[1] == self.config.in_features, f"expected [n, {self.config.in_features}]"
        return self.net(x)


# ----------------------------------------------------------------------------------------------------------------
# Ensemble.


def _as_tensor(x: np.ndarray | torch.Tensor, dtype: torch.dtype, device: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


class PixelEnsemble(nn.Module):
    """M independently initialised :class:`PixelMLP` members sharing one per-feature normalisation."""

    def __init__(self, config: EnsembleConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        members = []
        for m in range(config.n_members):
            with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
                torch.manual_seed(seed * 1000 + m)
                members.append(PixelMLP(config.mlp))
        self.members = nn.ModuleList(members)
        self.register_buffer("feature_mean", torch.zeros(config.mlp.in_features))
        self.register_buffer("feature_std", torch.ones(config.mlp.in_features))

    # -- normalisation -------------------------------------------------------------------------------------------

    def fit_normalisation(self, batches: Batches, max_pixels: int) -> int:
        """Per-feature mean/std over up to ``max_pixels`` pixels, merged batch by batch (Chan et al.) in float64.

        Returns:
            Pixels used.
        """
        n, mean, m2 = 0, None, None
        for x, _ in batches:
            x = np.asarray(x, np.float64)[: max_pixels - n]
            bn, bmean = x.shape[0], x.mean(axis=0)
            bm2 = ((x - bmean) ** 2).sum(axis=0)
            if mean is None:
                n, mean, m2 = bn, bmean, bm2
            else:
                delta = bmean - mean
                total = n + bn
                mean = mean + delta * bn / total
                m2 = m2 + bm2 + delta**2 * n * bn / total
                n = total
            if n >= max_pixels:
                break
        if mean is None or n < 2:
            raise ValueError("training stream yielded fewer than 2 pixels; cannot estimate feature normalisation")
        std = np.sqrt(m2 / (n - 1))
        std = np.where(std > 1e-6, std, 1.0)  # constant features: leave unscaled instead of dividing by ~0
        self.feature_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.feature_std.copy_(torch.as_tensor(std, dtype=torch.float32))
        return n

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.feature_mean) / self.feature_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw features ``[n, D]`` -> logits ``[M, n, K]``."""
        xn = self.normalise(x)
        return torch.stack([member(xn) for member in self.members])

    # -- training ------------------------------------------------------------------------------------------------

    def _optimizers(self, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
        lr = cfg.lr if cfg.lr is not None else OPTIMIZERS[cfg.optimizer]
        if cfg.optimizer == "sgd":
            return [
                torch.optim.SGD(m.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
                for m in self.members
            ]
        return [torch.optim.Adam(m.parameters(), lr=lr, weight_decay=cfg.weight_decay) for m in self.members]

    def _member_losses(
        self,
        logits: torch.Tensor,
        y: torch.Tensor,
        cfg: TrainConfig,
        class_weight: torch.Tensor,
        sample_weight: torch.Tensor,
        smoothing: float,
    ) -> torch.Tensor:
        """Weighted-mean cross-entropy of one member, matching ``reduction='mean'`` semantics with weights."""
        per_pixel = F.cross_entropy(
            logits, y.clamp_max(logits.shape[1] - 1), weight=class_weight, label_smoothing=smoothing, reduction="none"
        )
        valid = (y != cfg.ignore_index).float()
        w = class_weight[y.clamp_max(logits.shape[1] - 1)] * valid * sample_weight
        return (per_pixel * w).sum() / w.sum().clamp_min(1e-12)

    def _train_epoch(
        self,
        batches: Batches,
        cfg: TrainConfig,
        optimizers: list[torch.optim.Optimizer],
        active: list[bool],
        class_weight: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[list[float], int]:
        totals = [0.0] * len(self.members)
        steps, pixels = 0, 0
        for x, y in batches:
            x = _as_tensor(x, torch.float32, cfg.device)
            y = _as_tensor(y, torch.long, cfg.device)
            if x.shape[0] < 2:  # BatchNorm cannot train on one pixel
                continue
            xn = self.normalise(x)
            for m, (member, opt) in enumerate(zip(self.members, optimizers, strict=True)):
                if not active[m]:
                    continue
                member.train()
                if cfg.bootstrap:
                    sw = torch.poisson(torch.ones(x.shape[0], device=cfg.device), generator=generator)
                else:
                    sw = torch.ones(x.shape[0], device=cfg.device)
                loss = self._member_losses(member(xn), y, cfg, class_weight, sw, cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                totals[m] += float(loss.detach())
            steps += 1
            pixels += int(x.shape[0])
        if steps == 0:
            raise ValueError("training stream yielded no batch with >= 2 pixels")
        return [t / steps if active[m] else math.nan for m, t in enumerate(totals)], pixels

    @torch.no_grad()
    def evaluate_loss(self, batches: Batches, ignore_index: int = 255, device: str = "cpu") -> list[float]:
        """Per-member mean cross-entropy (no smoothing, no class weights) over a stream: the early-stopping signal."""
        self.eval()
        totals = torch.zeros(len(self.members), dtype=torch.float64)
        count = 0
        for x, y in batches:
            x = _as_tensor(x, torch.float32, device)
            y = _as_tensor(y, torch.long, device)
            logits = self(x)  # [M, n, K]
            valid = y != ignore_index
            if not valid.any():
                continue
            lp = torch.log_softmax(logits[:, valid], dim=-1)
            totals += -lp.gather(2, y[valid].expand(lp.shape[0], -1).unsqueeze(-1)).squeeze(-1).sum(1).double()
            count += int(valid.sum())
        if count == 0:
            raise ValueError("validation stream yielded no labelled pixels")
        return (totals / count).tolist()

    def fit(
        self,
        train: Batches,
        val: Batches | None = None,
        config: TrainConfig | None = None,
        callback: Callback | None = None,
    ) -> FitResult:
        """Train all members on a stream of minibatches, with per-member early stopping on ``val``.

        Args:
            train: Re-iterable stream of ``(features [B, D], labels [B])``; each iteration is one epoch.
            val: Re-iterable validation stream (same batches each time, e.g. ``BatchStream(fixed=True)``);
                None trains for ``max_epochs`` and keeps the last weights.
            config: Training settings.
            callback: Receives a :class:`ProgressEvent` after normalisation and each epoch.

        Returns:
            :class:`FitResult`. The ensemble holds each member's best-validation weights afterwards.
        """
        cfg = config or TrainConfig()
        notify = callback or (lambda _event: None)
        self.to(cfg.device)
        k = self.config.mlp.n_classes
        if cfg.class_weights is not None and len(cfg.class_weights) != k:
            raise ValueError(f"class_weights has {len(cfg.class_weights)} entries, expected n_classes={k}")
        class_weight = torch.tensor(cfg.class_weights or [1.0] * k, dtype=torch.float32, device=cfg.device)
        history: list[ProgressEvent] = []

        def emit(event: ProgressEvent) -> None:
            history.append(event)
            notify(event)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            generator = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
            used = self.fit_normalisation(train, cfg.norm_pixels)
            emit(ProgressEvent("normalisation", pixels_seen=used, active_members=len(self.members)))
            optimizers = self._optimizers(cfg)
            n = len(self.members)
            active = [True] * n
            best_loss = [math.inf] * n
            best_epoch = [-1] * n
            best_state = [None] * n
            since_best = [0] * n
            seen = 0
            epoch = 0
            for epoch in range(1, cfg.max_epochs + 1):
                train_loss, pixels = self._train_epoch(train, cfg, optimizers, active, class_weight, generator)
                seen += pixels
                val_loss = None
                if val is not None:
                    val_loss = self.evaluate_loss(val, cfg.ignore_index, cfg.device)
                    for m in range(n):
                        if not active[m]:
                            continue
                        if val_loss[m] < best_loss[m] - cfg.min_delta:
                            best_loss[m], best_epoch[m], since_best[m] = val_loss[m], epoch, 0
                            best_state[m] = copy.deepcopy(self.members[m].state_dict())
                        else:
                            since_best[m] += 1
                            if cfg.patience and since_best[m] >= cfg.patience:
                                active[m] = False
                emit(ProgressEvent("epoch", epoch, train_loss, val_loss, sum(active), seen))
                if not any(active):
                    break
            for m, state in enumerate(best_state):
                if state is not None:
                    self.members[m].load_state_dict(state)
        self.eval()
        emit(ProgressEvent("done", epoch, pixels_seen=seen, active_members=sum(active)))
        return FitResult(epoch, best_epoch, best_loss if val is not None else None, history)

    # -- prediction ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def predict_proba(self, features: np.ndarray | torch.Tensor, batch_size: int = 65_536) -> np.ndarray:
        """Softmax of every member, ``float32 [M, n, K]``, computed in chunks of ``batch_size`` pixels."""
        if features.ndim != 2 or features.shape[1] != self.config.mlp.in_features:
            raise ValueError(f"expected features [n, {self.config.mlp.in_features}], received {tuple(features.shape)}")
        self.eval()
        device = self.feature_mean.device
        n = features.shape[0]
        out = np.empty((len(self.members), n, self.config.mlp.n_classes), np.float32)
        for start in range(0, n, batch_size):
            x = _as_tensor(features[start : start + batch_size], torch.float32, str(device))
            out[:, start : start + x.shape[0]] = torch.softmax(self(x), dim=-1).cpu().numpy()
        return out

    def predict(self, features: np.ndarray | torch.Tensor, mode: str = "mean", batch_size: int = 65_536) -> np.ndarray:
        """Class ids ``int64 [n]``: argmax of the mean probability (``"mean"``) or majority vote (``"vote"``)."""
        if mode not in ("mean", "vote"):
            raise ValueError(f"unknown mode {mode!r}; expected 'mean' or 'vote'")
        return predict_from_proba(self.predict_proba(features, batch_size), mode)

    # -- persistence ---------------------------------------------------------------------------------------------

    def save(
        self, path: str | os.PathLike[str], train_config: TrainConfig | None = None, extra: dict[str, Any] | None = None
    ) -> Path:
        """Write config + state dict (no pickled objects) to ``path``, atomically (temp file, then rename)."""
        payload = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "train_config": asdict(train_config) if train_config else None,
            "extra": extra or {},
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }
        return atomic_torch_save(payload, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], map_location: str = "cpu") -> PixelEnsemble:
        """Rebuild from :meth:`save` output with ``torch.load(weights_only=True)``."""
        payload = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
        if payload.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"{path}: checkpoint version {payload.get('version')}, expected {CHECKPOINT_VERSION}")
        model = cls(EnsembleConfig.from_dict(payload["config"]))
        model.load_state_dict(payload["state_dict"])
        model.eval()
        return model


# ----------------------------------------------------------------------------------------------------------------
# Combining members and measuring their disagreement.


def predict_from_proba(probs: np.ndarray, mode: str = "mean") -> np.ndarray:
    """Labels from member probabilities ``[M, n, K]``: mean-probability argmax or majority vote (ties -> lower id)."""
    if mode == "mean":
        return probs.mean(axis=0).argmax(axis=-1)
    if mode == "vote":
        votes = probs.argmax(axis=-1)  # [M, n]
        k = probs.shape[-1]
        counts = np.zeros((probs.shape[1], k), np.int64)
        np.add.at(counts, (np.broadcast_to(np.arange(probs.shape[1]), votes.shape), votes), 1)
        return counts.argmax(axis=-1)
    raise ValueError(f"unknown mode {mode!r}; expected 'mean' or 'vote'")


def _entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats over the last axis, with 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)


def js_divergence(probs: np.ndarray | torch.Tensor) -> np.ndarray:
    """Generalised Jensen-Shannon divergence across members, per pixel: ``H(mean_m p_m) - mean_m H(p_m)``.

    Zero when all members agree exactly; at most ``log M`` (nats). DatasetGAN's per-pixel uncertainty.

    Args:
        probs: ``[M, n, K]`` member probabilities.

    Returns:
        float64 ``[n]``, clipped at 0 against rounding.
    """
    p = probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
    if p.ndim != 3:
        raise ValueError(f"expected probabilities [M, n, K], received shape {p.shape}")
    p = p.astype(np.float64)
    return np.maximum(_entropy(p.mean(axis=0)) - _entropy(p).mean(axis=0), 0.0)


def image_uncertainty(js_map: np.ndarray, top_frac: float = 0.1) -> float:
    """DatasetGAN's image score: mean JS divergence of the image's most uncertain ``top_frac`` of pixels."""
    if not 0.0 < top_frac <= 1.0:
        raise ValueError(f"top_frac must be in (0, 1], received {top_frac}")
    values = np.asarray(js_map, np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan")
    k = max(int(math.ceil(top_frac * values.size)), 1)
    return float(np.partition(values, values.size - k)[values.size - k :].mean())
