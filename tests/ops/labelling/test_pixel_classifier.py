"""Pixel-classifier ensemble: learns a separable toy problem, JS divergence behaves, save/load round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ops.labelling.pixel_classifier import (
    EnsembleConfig,
    MLPConfig,
    PixelEnsemble,
    PixelMLP,
    ProgressEvent,
    TrainConfig,
    image_uncertainty,
    js_divergence,
    predict_from_proba,
)

D, K = 6, 3


def _toy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian blobs in 6-D, offset and scaled like raw generator activations (normalisation must cope)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    centres = np.eye(K, D) * 4
    x = (centres[y] + rng.normal(size=(n, D))) * np.array([1, 10, 0.1, 5, 1, 1]) + 50
    return x.astype(np.float32), y


class Stream:
    """Re-iterable minibatch stream, as ``BatchStream`` is."""

    def __init__(self, n: int, seed: int, batch: int = 256) -> None:
        self.x, self.y = _toy(n, seed)
        self.batch = batch

    def __iter__(self):
        for i in range(0, len(self.y), self.batch):
            yield self.x[i : i + self.batch], self.y[i : i + self.batch]


@pytest.fixture(scope="module")
def trained() -> tuple[PixelEnsemble, list[ProgressEvent]]:
    events: list[ProgressEvent] = []
    model = PixelEnsemble(EnsembleConfig(MLPConfig(D, K, hidden=(16, 8)), n_members=3))
    model.fit(
        Stream(2048, 1), Stream(512, 2), TrainConfig(lr=1e-2, max_epochs=6, patience=2, seed=0), callback=events.append
    )
    return model, events


def test_learns_separable_problem(trained) -> None:
    model, events = trained
    x, y = _toy(2000, 3)
    assert (model.predict(x) == y).mean() > 0.95
    assert (model.predict(x, mode="vote") == y).mean() > 0.95
    probs = model.predict_proba(x, batch_size=333)  # chunked
    assert probs.shape == (3, 2000, K) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1, atol=1e-5)
    stages = [e.stage for e in events]
    assert stages[0] == "normalisation" and stages[-1] == "done" and "epoch" in stages
    assert all(e.val_loss is not None and len(e.val_loss) == 3 for e in events if e.stage == "epoch")


def test_hdgan_sgd_settings_run() -> None:
    cfg = TrainConfig(optimizer="sgd", label_smoothing=0.1, class_weights=(1.0, 2.0, 1.0), max_epochs=1, seed=1)
    model = PixelEnsemble(EnsembleConfig(MLPConfig(D, K), n_members=2))
    result = model.fit(Stream(512, 4), None, cfg)
    assert result.epochs == 1 and result.best_val_loss is None
    ignore = Stream(512, 5)
    ignore.y[::2] = 255  # unannotated pixels are left out of the loss
    model.fit(ignore, ignore, cfg)
    with pytest.raises(ValueError, match=r"unknown optimizer 'rmsprop'; known: \['adam', 'sgd'\]"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="class_weights has 2 entries, expected n_classes=3"):
        model.fit(Stream(512, 4), None, TrainConfig(class_weights=(1.0, 2.0)))


def test_members_and_defaults() -> None:
    cfg = MLPConfig(496, 5)
    assert cfg.hidden == (128, 32) and cfg.dropout == 0.3 and cfg.batch_norm
    assert EnsembleConfig(cfg).n_members == 10
    layers = [type(m).__name__ for m in PixelMLP(cfg).net]
    assert layers == ["Linear", "ReLU", "BatchNorm1d", "Dropout"] * 2 + ["Linear"]
    a, b = PixelEnsemble(EnsembleConfig(cfg, 2)).members
    assert not torch.equal(a.net[0].weight, b.net[0].weight)  # independently initialised


def test_js_divergence() -> None:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(K), size=50)
    same = np.stack([p] * 4)
    np.testing.assert_allclose(js_divergence(same), 0, atol=1e-12)
    onehot = np.eye(K)[[0, 1]][:, None, :]  # two members, certain and disagreeing: JS = log 2
    np.testing.assert_allclose(js_divergence(onehot), [np.log(2)])
    disagree = np.stack([p, rng.dirichlet(np.ones(K), size=50)])
    assert (js_divergence(disagree) > 0).all()
    assert js_divergence(torch.from_numpy(disagree)).shape == (50,)
    with pytest.raises(ValueError, match=r"expected probabilities \[M, n, K\]"):
        js_divergence(p)


def test_image_uncertainty_and_vote() -> None:
    js = np.zeros(100)
    js[:10] = 1.0
    assert image_uncertainty(js) == 1.0  # top 10% only
    assert image_uncertainty(js, top_frac=0.2) == 0.5
    with pytest.raises(ValueError, match="top_frac"):
        image_uncertainty(js, top_frac=0)
    probs = np.array([[[0.6, 0.4]], [[0.6, 0.4]], [[0.0, 1.0]]])  # vote says 0, mean says 1
    assert predict_from_proba(probs, "vote")[0] == 0 and predict_from_proba(probs, "mean")[0] == 1


def test_save_load_round_trip(trained, tmp_path) -> None:
    model, _ = trained
    path = model.save(tmp_path / "clf.pt", TrainConfig(lr=1e-2))
    assert [p.name for p in tmp_path.iterdir()] == ["clf.pt"]
    loaded = PixelEnsemble.load(path)
    x, _ = _toy(300, 6)
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))
    assert loaded.config == model.config
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a histofactory.pixel_ensemble checkpoint"):
        PixelEnsemble.load(tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"expected features \[n, 6\]"):
        loaded.predict_proba(np.zeros((4, 5), np.float32))


def test_early_stopping_keeps_best_members() -> None:
    noise_val = Stream(512, 7)
    noise_val.y = np.random.default_rng(0).integers(0, K, len(noise_val.y))  # unlearnable: val loss cannot improve
    model = PixelEnsemble(EnsembleConfig(MLPConfig(D, K, hidden=(8,)), n_members=2))
    result = model.fit(Stream(1024, 1), noise_val, TrainConfig(lr=1e-2, max_epochs=30, patience=2))
    assert result.epochs < 30
    assert all(1 <= b <= result.epochs - 2 for b in result.best_epoch)
    np.testing.assert_allclose(model.evaluate_loss(noise_val), result.best_val_loss, rtol=1e-5)


def test_trains_from_feature_store(tmp_path) -> None:
    """End to end on the real stream: native store -> BatchStream -> ensemble -> whole-image prediction."""
    from ops.evaluation.metrics import confusion_matrix, mean_dice
    from ops.labelling.feature_sampler import BatchStream, FeatureSampler
    from ops.labelling.feature_store import write_features

    rng = np.random.default_rng(0)
    labels, images = [], []
    for _ in range(3):
        y = (rng.random((4, 4)) * K).astype(np.uint8).repeat(8, 0).repeat(8, 1)  # 8-px squares of 3 classes
        onehot = np.eye(K, dtype=np.float32)[y].transpose(2, 0, 1)
        images.append(
            [
                rng.normal(size=(8, 4, 4)).astype(np.float32),  # uninformative low-res block
                onehot * 4 + rng.normal(size=(K, 32, 32)).astype(np.float32),
            ]
        )
        labels.append(y)
    sampler = FeatureSampler(write_features(tmp_path / "f.zarr", images))
    train = BatchStream(sampler, labels[:2], [0, 1], batch_size=256, batches_per_epoch=8, class_balance=1.0)
    val = BatchStream(sampler, labels[2:], [2], batch_size=256, batches_per_epoch=2, fixed=True)
    model = PixelEnsemble(EnsembleConfig(MLPConfig(sampler.n_features, K, hidden=(16,)), n_members=2))
    model.fit(train, val, TrainConfig(lr=1e-2, max_epochs=4))
    pred = np.concatenate(
        [
            model.predict(f.reshape(-1, f.shape[-1])).reshape(f.shape[:2])
            for _, f in sampler.iter_row_bands(2, band_rows=10)
        ]
    )
    assert mean_dice(confusion_matrix(labels[2], pred, K)) > 0.9
