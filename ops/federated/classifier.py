"""The paper's downstream check: a tile classifier trained on real, generated, or generated + real tiles.

If generated tiles can stand in for real ones, a classifier trained on them scores on held-out real slides close
to one trained on real tiles. Scores: accuracy, F1 (of the positive class when there are two classes, as the paper
reports; macro F1 otherwise) and recall per class, so a classifier that predicts one class everywhere is visible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ops.federated.networks import TileClassifier
from ops.federated.training import augment, to_tensor_images


@dataclass(frozen=True)
class ClassifierScores:
    accuracy: float
    f1: float
    recall: tuple[float, ...]  # per class

    def to_metadata(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}_acc": self.accuracy, f"{prefix}_f1": self.f1}
        out.update({f"{prefix}_recall_{c}": r for c, r in enumerate(self.recall)})
        return out


def scores(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> ClassifierScores:
    """Accuracy, F1 and per-class recall from label arrays (a confusion matrix via ``bincount``)."""
    cm = np.bincount(truth * n_classes + pred, minlength=n_classes**2).reshape(n_classes, n_classes).astype(float)
    tp = np.diag(cm)
    recall = tp / np.maximum(cm.sum(axis=1), 1)
    precision = tp / np.maximum(cm.sum(axis=0), 1)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return ClassifierScores(
        accuracy=float(tp.sum() / max(cm.sum(), 1)),
        f1=float(f1[1] if n_classes == 2 else f1.mean()),
        recall=tuple(float(r) for r in recall),
    )


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    backbone: str = "cnn",
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
) -> TileClassifier:
    """Train a small classifier with the paper's augmentation (crops, flips, affine up to 45°), class-balanced."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x_all, y_all = to_tensor_images(images), torch.as_tensor(labels, dtype=torch.int64)
    model = TileClassifier(backbone, images.shape[1], n_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    counts = torch.bincount(y_all, minlength=n_classes).float()
    weights = (1.0 / counts.clamp(min=1))[y_all]  # balanced batches: the rare class is not ignored
    model.train()
    for _ in range(steps):
        idx = torch.multinomial(weights, batch_size, replacement=True, generator=g)
        loss = F.cross_entropy(model(augment(x_all[idx], g)), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def predict(model: TileClassifier, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Predicted class per image, ``int64 [N]``."""
    model.eval()
    x = to_tensor_images(images)
    return torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)]).numpy()


def evaluate(model: TileClassifier, images: np.ndarray, labels: np.ndarray, n_classes: int) -> ClassifierScores:
    return scores(np.asarray(labels, np.int64), predict(model, images), n_classes)
