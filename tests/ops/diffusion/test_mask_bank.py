"""Mask bank: shape extraction, class-balanced sampling, reassignment, persistence, errors."""

import numpy as np
import pytest
from scipy import ndimage
from skimage import data

from ops.diffusion.mask_bank import MaskBank, shares, weights_by_name
from ops.labelling.class_maps import CLASS_MAPS, IGNORE_INDEX
from ops.labelling.demo_annotator import DemoAnnotatorConfig, demo_annotate

EIGHT = np.ones((3, 3), bool)
DEMO = CLASS_MAPS["demo"]
RARE, SINGLE = 2, 3  # synthetic masks: discs of a rare class; one class with a single 1x5 shape in the whole bank


@pytest.fixture(scope="module")
def demo_masks() -> np.ndarray:
    """64 real-looking masks: the demo annotator on 64-px crops of the IHC reference image."""
    img = data.immunohistochemistry()
    crops = [np.ascontiguousarray(img[y : y + 64, x : x + 64]) for y in range(0, 512, 64) for x in range(0, 512, 64)]
    return np.stack([demo_annotate(c, DemoAnnotatorConfig(mpp=0.5)) for c in crops])


@pytest.fixture(scope="module")
def rare_masks() -> np.ndarray:
    """40 masks: background 0, a wavy class-1 region, 0-2 discs (r=3) of the rare class 2, an unlabelled stripe."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    masks = np.zeros((40, 64, 64), np.uint8)
    for i, m in enumerate(masks):
        m[yy > 20 + 8 * np.sin(xx / (5 + i % 7)) + rng.integers(0, 20)] = 1
        for cy, cx in rng.integers(4, 60, size=(int(rng.integers(0, 3)), 2)):
            m[(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = RARE
        m[:, 62:] = IGNORE_INDEX
    masks[7, 10, 20:25] = SINGLE
    return masks


@pytest.fixture(scope="module")
def rare_bank(rare_masks: np.ndarray) -> MaskBank:
    return MaskBank.from_masks(rare_masks, 4)


def test_shapes_are_the_connected_components(demo_masks: np.ndarray) -> None:
    bank = MaskBank.from_masks(demo_masks, DEMO.n_classes, min_area=1)
    for k in range(DEMO.n_classes):
        n_components = sum(ndimage.label(m == k, structure=EIGHT)[1] for m in demo_masks)
        own = np.flatnonzero(bank.shape_class == k)
        assert len(own) == n_components
        assert bank.shape_area[own].sum() == (demo_masks == k).sum()
        assert sum(int(bank.patch(j).sum()) for j in own) == bank.shape_area[own].sum()
    np.testing.assert_allclose(bank.base_shares, shares(demo_masks, DEMO.n_classes))
    assert len(MaskBank.from_masks(demo_masks, DEMO.n_classes, min_area=4).shape_class) < len(bank.shape_class)


def test_ignore_pixels_are_never_a_class(rare_masks: np.ndarray, rare_bank: MaskBank) -> None:
    assert set(np.unique(rare_bank.shape_class)) <= {0, 1, RARE, SINGLE}
    assert rare_bank.shape_area.sum() <= (rare_masks != IGNORE_INDEX).sum()
    assert not (rare_bank.canvases == IGNORE_INDEX).any()
    np.testing.assert_array_equal(rare_bank.canvases[:, :, 62:], rare_bank.canvases[:, :, 61:62].repeat(2, axis=2))


def test_shares_counts_each_mask_once_without_ignore() -> None:
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[0, :2] = 1
    masks[1] = 2
    masks[1, 0, 0] = 1
    masks[1, 3] = IGNORE_INDEX
    expected = (np.array([0.5, 0.5, 0.0]) + np.array([0.0, 1 / 12, 11 / 12])) / 2
    np.testing.assert_allclose(shares(masks, 3), expected)


def test_plain_sample_is_deterministic_labelled_and_keeps_shares(demo_masks: np.ndarray) -> None:
    bank = MaskBank.from_masks(demo_masks, DEMO.n_classes)
    out = bank.sample(np.arange(200))
    assert out.shape == (200, 64, 64) and out.dtype == np.uint8
    assert out.max() < DEMO.n_classes
    np.testing.assert_array_equal(bank.sample([7, 3, 11])[1], bank.sample([3])[0])
    np.testing.assert_array_equal(bank.sample(np.array([3, 3]))[0], out[3])
    n_same = sum(np.array_equal(out[i], out[i + 1]) for i in range(199))
    assert n_same < 10  # two seeds share canvas + transform with probability 1/512
    np.testing.assert_allclose(shares(out, DEMO.n_classes), bank.base_shares, atol=0.05)


def test_rare_class_upweighted_three_times(rare_bank: MaskBank) -> None:
    base = rare_bank.base_shares
    out = rare_bank.sample(np.arange(200), {RARE: 3.0})
    got = shares(out, 4)
    assert 0.003 < base[RARE] < 0.01
    assert got[RARE] == pytest.approx(3 * base[RARE], rel=0.35)
    assert np.argsort(got[:2]).tolist() == np.argsort(base[:2]).tolist()
    assert got[:2] == pytest.approx(base[:2], abs=0.05)


def test_demo_class_upweighted_keeps_order_of_others(demo_masks: np.ndarray) -> None:
    bank = MaskBank.from_masks(demo_masks, DEMO.n_classes)
    k = DEMO.index("nucleus interior")
    got = shares(bank.sample(np.arange(200), {k: 3.0}), DEMO.n_classes)
    assert got[k] == pytest.approx(3 * bank.base_shares[k], rel=0.35)
    others = [c for c in range(DEMO.n_classes) if c != k]
    assert np.argsort(got[others]).tolist() == np.argsort(bank.base_shares[others]).tolist()


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_down_weighting_removes_components(rare_bank: MaskBank, weight: float) -> None:
    out = rare_bank.sample(np.arange(200), {RARE: weight})
    assert not (out == IGNORE_INDEX).any()
    got = shares(out, 4)[RARE]
    if weight == 0:
        assert got == 0
    else:
        assert got == pytest.approx(weight * rare_bank.base_shares[RARE], rel=0.35)


def test_down_weighting_a_whole_mask_class_falls_back_to_common_class() -> None:
    masks = np.zeros((2, 8, 8), np.uint8)
    masks[1, :4] = 1
    out = MaskBank.from_masks(masks, 2).sample(np.arange(20), {0: 0.0})
    assert (out == 1).all()


def test_class_with_one_shape_borrows_reassigned_shapes(rare_bank: MaskBank) -> None:
    assert len(np.flatnonzero(rare_bank.shape_class == SINGLE)) == 1  # the 1x5 line
    seeds = np.arange(300)
    own_only = rare_bank.sample(seeds, {SINGLE: 50.0}, dihedral=False, min_shapes=1)
    borrowed = rare_bank.sample(seeds, {SINGLE: 50.0}, dihedral=False, min_shapes=3)
    # A 1-pixel-tall line cannot hold a solid 3x3 block; a reassigned disc or region shape does.
    assert not ndimage.binary_erosion(own_only == SINGLE, EIGHT[None]).any()
    assert ndimage.binary_erosion(borrowed == SINGLE, EIGHT[None]).any()
    target = 50 * rare_bank.base_shares[SINGLE]
    assert shares(borrowed, 4)[SINGLE] == pytest.approx(target, rel=0.35)


def test_save_load_round_trip(rare_bank: MaskBank, tmp_path) -> None:
    path = rare_bank.save(tmp_path / "banks" / "rare.npz")
    assert sorted(p.name for p in path.parent.iterdir()) == ["rare.npz"]  # temp file replaced, none left
    with np.load(path, allow_pickle=False) as z:
        assert z["masks"].dtype == np.uint8 and z["shape_pixels"].ndim == 1
    loaded = MaskBank.load(path)
    weights = {RARE: 3.0, 1: 0.5}
    np.testing.assert_array_equal(loaded.sample(np.arange(30), weights), rare_bank.sample(np.arange(30), weights))
    np.testing.assert_array_equal(loaded.base_shares, rare_bank.base_shares)


def test_load_rejects_foreign_npz(tmp_path) -> None:
    np.savez(tmp_path / "x.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="expected a mask bank .npz.*missing"):
        MaskBank.load(tmp_path / "x.npz")


def test_weights_by_name(demo_masks: np.ndarray) -> None:
    assert weights_by_name(DEMO.classes, {"stroma": 2.0, "background": 0.0}) == {4: 2.0, 0: 0.0}
    with pytest.raises(ValueError, match="unknown class 'strom' \\(did you mean 'stroma'\\?\\)"):
        weights_by_name(DEMO.classes, {"strom": 2.0})


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ({9: 2.0}, r"unknown class id 9; valid ids: \[0, 1, 2, 3\]"),
        ({"1": 2.0}, "unknown class id '1'"),
        ({1: -0.5}, r"class_weights\[1\]: expected a finite weight >= 0.*received -0.5"),
        ({1: float("nan")}, "expected a finite weight"),
    ],
)
def test_bad_weights(rare_bank: MaskBank, weights: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        rare_bank.sample([0], weights)


def test_absent_class_cannot_be_targeted(rare_masks: np.ndarray) -> None:
    bank = MaskBank.from_masks(rare_masks, 6)
    with pytest.raises(ValueError, match="class 5 has no pixels in the bank"):
        bank.sample([0], {5: 2.0})
    assert (bank.sample([0], {5: 0.0}) < 4).all()  # lowering an absent class is a harmless no-op


@pytest.mark.parametrize(
    ("masks", "n_classes", "match"),
    [
        (np.zeros((2, 8, 8), np.float32), 2, r"expected a uint8 array \[N, R, R\].*received float32 \(2, 8, 8\)"),
        (np.zeros((8, 8), np.uint8), 2, r"received uint8 \(8, 8\)"),
        (np.zeros((2, 8, 6), np.uint8), 2, r"received uint8 \(2, 8, 6\)"),
        (np.zeros((0, 8, 8), np.uint8), 2, r"received uint8 \(0, 8, 8\)"),
        (np.full((1, 8, 8), 7, np.uint8), 6, r"expected class ids 0..5 or 255.*received \[7\]"),
        (np.full((1, 8, 8), IGNORE_INDEX, np.uint8), 6, "masks \\[0\\] are all 255"),
        (np.zeros((1, 8, 8), np.uint8), 0, "n_classes: expected 1..254, received 0"),
    ],
)
def test_bad_masks(masks: np.ndarray, n_classes: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MaskBank.from_masks(masks, n_classes)


def test_bad_seeds_and_min_area(rare_bank: MaskBank, rare_masks: np.ndarray) -> None:
    with pytest.raises(ValueError, match="seeds: expected a 1-D sequence of integers"):
        rare_bank.sample([0.5])
    with pytest.raises(ValueError, match="min_area: expected >= 1 pixel, received 0"):
        MaskBank.from_masks(rare_masks, 4, min_area=0)
