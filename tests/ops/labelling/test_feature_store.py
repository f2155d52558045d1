"""Native-resolution feature store writer: atomic writes, bad blocks rejected with the block named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from feature_store_helpers import OUT, SHAPES, full_maps, make_images

from ops.labelling.feature_sampler import FeatureSampler
from ops.labelling.feature_store import FeatureStoreError, FeatureStoreWriter, write_features


def test_writer_is_atomic(tmp_path) -> None:
    target = tmp_path / "f.zarr"
    images = make_images()
    with pytest.raises(RuntimeError, match="generator crashed"), FeatureStoreWriter(target, 2, SHAPES, OUT) as w:
        w.write(0, images[0])
        assert not target.exists()  # nothing visible while writing
        raise RuntimeError("generator crashed")
    assert list(tmp_path.iterdir()) == []  # aborted: no target, no temp dir

    writer = FeatureStoreWriter(target, 2, SHAPES, OUT)
    writer.write(1, images[1])
    with pytest.raises(FeatureStoreError, match=r"1 of 2 images were never written \(first: \[0\]\)"):
        writer.close()
    assert list(tmp_path.iterdir()) == []

    with FeatureStoreWriter(target, 2, SHAPES, OUT) as w:  # a generator batch, as torch tensors
        w.write_batch(0, [torch.from_numpy(np.stack([im[k] for im in images[:2]])) for k in range(len(SHAPES))])
    assert [p.name for p in tmp_path.iterdir()] == ["f.zarr"]
    np.testing.assert_allclose(FeatureSampler(target).read_rows(1, 0, 4), full_maps(images, True)[1][:4], atol=1e-5)
    with pytest.raises(FeatureStoreError, match="already exists; pass overwrite=True"):
        write_features(target, images[:2], OUT)
    write_features(target, images[1:], OUT, overwrite=True)  # swap in place, old version deleted
    assert [p.name for p in tmp_path.iterdir()] == ["f.zarr"]
    np.testing.assert_allclose(FeatureSampler(target).read_rows(0, 0, 4), full_maps(images, True)[1][:4], atol=1e-5)


def test_writer_rejects_bad_blocks(tmp_path) -> None:
    images = make_images()
    with FeatureStoreWriter(tmp_path / "f.zarr", 1, SHAPES, OUT) as w:
        with pytest.raises(FeatureStoreError, match=r"block_1 of image 0: expected shape \(8, 8, 8\)"):
            w.write(0, [images[0][0], np.zeros((8, 4, 4)), *images[0][2:]])
        with pytest.raises(FeatureStoreError, match="expected 4 blocks, received 3"):
            w.write(0, images[0][:3])
        with pytest.raises(FeatureStoreError, match="beyond float16 range"):
            w.write(0, [images[0][0] * 1e6, *images[0][1:]])
        with pytest.raises(FeatureStoreError, match=r"image_index 5 outside \[0, 1\)"):
            w.write(5, images[0])
        w.write(0, images[0])
    with pytest.raises(FeatureStoreError, match="is not a zarr group"):
        FeatureSampler(tmp_path / "f.zarr" / "block_0")
    zarr.open_group(tmp_path / "plain.zarr", mode="w")
    with pytest.raises(FeatureStoreError, match="not a histofactory native feature store"):
        FeatureSampler(tmp_path / "plain.zarr")
    with pytest.raises(FeatureStoreError, match="does not exist"):
        FeatureSampler(tmp_path / "missing.zarr")
