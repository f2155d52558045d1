"""Feature sampler: exact bilinear upsampling on the fly, chunk-bounded reads, the HDGAN layout, the batch stream."""

from __future__ import annotations

import numpy as np
import pytest
from feature_store_helpers import N_IMAGES, OUT, SHAPES, full_maps, make_images
from zarr.storage import LocalStore, WrapperStore

from ops.labelling.feature_sampler import BatchStream, FeatureSampler, UpsampledFeatureSampler
from ops.labelling.feature_store import FeatureStoreError, FeatureStoreWriter, write_features, write_upsampled_features


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    images = make_images()
    path = write_features(tmp_path_factory.mktemp("fs") / "features.zarr", images, output_shape=OUT)
    return path, images


def test_sample_equals_full_interpolate(store) -> None:
    path, images = store
    sampler = FeatureSampler(path)
    assert sampler.n_features == sum(s[0] for s in SHAPES) and sampler.output_shape == OUT
    rng = np.random.default_rng(1)
    n = 600
    idx, ys, xs = rng.integers(0, N_IMAGES, n), rng.integers(0, OUT[0], n), rng.integers(0, OUT[1], n)
    got = sampler.sample(idx, ys, xs)
    assert got.dtype == np.float32 and got.shape == (n, sampler.n_features)
    exact = np.stack(full_maps(images, fp16=True))[idx, ys, xs]  # same fp16 inputs: only float32 rounding
    np.testing.assert_allclose(got, exact, atol=1e-5)
    reference = np.stack(full_maps(images, fp16=False))[idx, ys, xs]  # the fp32 originals: fp16 tolerance
    np.testing.assert_allclose(got, reference, atol=4e-3, rtol=1e-3)


def test_read_rows_and_hdgan_layout_match(store, tmp_path) -> None:
    path, images = store
    sampler = FeatureSampler(path)
    full = full_maps(images, fp16=True)[1]
    np.testing.assert_allclose(sampler.read_rows(1, 5, 19), full[5:19], atol=1e-5)
    bands = np.concatenate([band for _, band in sampler.iter_row_bands(1, band_rows=7)])
    np.testing.assert_allclose(bands, full, atol=1e-5)

    npy = write_upsampled_features(tmp_path / "img1.npy", images[1], OUT, band_rows=5)
    assert [p.name for p in tmp_path.iterdir()] == ["img1.npy"]  # temp file renamed away
    memmap = np.load(npy, mmap_mode="r")
    assert memmap.dtype == np.float16 and memmap.shape == (*OUT, sampler.n_features)
    ys, xs = np.array([0, 31, 12]), np.array([0, 23, 7])
    np.testing.assert_allclose(
        UpsampledFeatureSampler([npy]).sample(0, ys, xs), sampler.sample(1, ys, xs), atol=4e-3, rtol=1e-3
    )


class CountingStore(WrapperStore):
    """Counts bytes and keys the reader fetches, to prove reads stay within the chunks a batch needs."""

    def __init__(self, store: LocalStore) -> None:
        super().__init__(store)
        self.nbytes = 0
        self.keys: list[str] = []

    async def get(self, key, prototype, byte_range=None):  # noqa: ANN001, ANN201 - zarr's signature
        buf = await super().get(key, prototype, byte_range)
        if buf is not None:
            self.nbytes += len(buf)
            self.keys.append(key)
        return buf

    def reset(self) -> None:
        self.nbytes, self.keys = 0, []


def test_sampling_reads_only_needed_chunks(tmp_path) -> None:
    rng = np.random.default_rng(2)
    shapes = [(4, 16, 16), (2, 64, 64)]
    path = tmp_path / "f.zarr"
    with FeatureStoreWriter(path, 8, shapes, chunk_edge=16) as w:  # block_1 split into 4x4 chunks of 16 px
        for i in range(8):
            w.write(i, [rng.normal(size=s) for s in shapes])
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and "/c/" in f.as_posix())
    store = CountingStore(LocalStore(path, read_only=True))
    sampler = FeatureSampler(store)

    store.reset()
    sampler.sample(3, rng.integers(0, 64, 200), rng.integers(0, 64, 200))  # one image of eight
    assert store.nbytes < total / 8 * 1.1
    assert {k.split("/")[2] for k in store.keys} == {"3"}  # chunk keys block_k/c/<image>/...

    store.reset()
    sampler.sample(np.array([5, 5]), np.array([1, 6]), np.array([2, 9]))  # top-left corner only
    assert sorted(store.keys) == ["block_0/c/5/0/0/0", "block_1/c/5/0/0/0"]
    assert store.nbytes < total / 8 / 4

    # A windowed batch stream decodes at most the chunks under its windows: 2 images x (<= 2x2 + 1) chunks.
    labels = [np.ones((64, 64), np.uint8)] * 8
    stream = BatchStream(sampler, labels, batch_size=256, batches_per_epoch=1, window=16, windows_per_batch=2)
    store.reset()
    next(iter(stream))
    assert len({k.split("/")[2] for k in store.keys}) == 2 and len(store.keys) <= 10
    assert store.nbytes < 2 * (total / 8) / 2  # under half of the two images touched


def _labels(rng: np.random.Generator) -> list[np.ndarray]:
    """Imbalanced masks: class 2 is ~4% of pixels; a band of unannotated (255) rows."""
    masks = []
    for _ in range(N_IMAGES):
        m = np.where(rng.random(OUT) < 0.3, 1, 0).astype(np.uint8)
        m[10:13, 5:13] = 2
        m[-4:] = 255
        masks.append(m)
    return masks


def test_batch_stream(store) -> None:
    path, _ = store
    sampler = FeatureSampler(path)
    labels = _labels(np.random.default_rng(3))
    natural = BatchStream(sampler, labels, batch_size=512, batches_per_epoch=2, n_classes=3, seed=0)
    balanced = BatchStream(sampler, labels, batch_size=512, batches_per_epoch=2, n_classes=3, class_balance=1.0, seed=0)
    for stream, low, high in ((natural, 0.0, 0.1), (balanced, 0.25, 0.42)):
        batches = list(stream)
        assert len(batches) == 2
        for x, y in batches:
            assert x.shape == (512, sampler.n_features) and x.dtype == np.float32 and y.dtype == np.int64
            assert 255 not in y
            assert low < np.mean(y == 2) < high

    val = BatchStream(sampler, labels, batch_size=64, batches_per_epoch=1, fixed=True, seed=5)
    a, b = next(iter(val)), next(iter(val))
    np.testing.assert_array_equal(a[0], b[0])  # validation replays
    c, d = next(iter(natural)), next(iter(natural))
    assert not np.array_equal(c[1], d[1])  # training epochs differ


def test_batch_stream_errors(store) -> None:
    sampler = FeatureSampler(store[0])
    with pytest.raises(FeatureStoreError, match=r"has shape \(8, 8\), expected the feature output shape \(32, 24\)"):
        BatchStream(sampler, [np.zeros((8, 8), np.uint8)] * N_IMAGES)
    with pytest.raises(FeatureStoreError, match=r"class ids \[7\] >= n_classes=3"):
        BatchStream(sampler, [np.full(OUT, 7, np.uint8)], n_classes=3)
    with pytest.raises(FeatureStoreError, match="no labelled pixels"):
        BatchStream(sampler, [np.full(OUT, 255, np.uint8)])
    labels = [np.zeros(OUT, np.uint8)]
    with pytest.raises(FeatureStoreError, match=r"window must be in \[1, 24\] output pixels, received 40"):
        BatchStream(sampler, labels, window=40)
    with pytest.raises(FeatureStoreError, match=r"image_indices must lie in \[0, 3\)"):
        BatchStream(sampler, labels, image_indices=[3])
