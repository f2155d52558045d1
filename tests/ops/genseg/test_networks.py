"""Searchable cells, the mask-to-image generator, the PatchGAN and the generator file."""

import pytest
import torch

from ops.common.file_io import CheckpointError
from ops.genseg.networks import (
    CANDIDATE_OPS,
    GenSegConfig,
    PatchDiscriminator,
    SearchableCell,
    SearchableGenerator,
    load_generator,
    save_generator,
)

TINY = GenSegConfig(n_classes=3, resolution=16, base_channels=4, channel_max=8, depth=2, disc_channels=4)


def test_cell_weights_sum_to_one_and_a_one_hot_cell_is_its_op():
    torch.manual_seed(0)
    cell = SearchableCell(4)
    with torch.no_grad():
        cell.alpha.copy_(torch.randn(len(CANDIDATE_OPS)))
    assert torch.isclose(cell.weights().sum(), torch.tensor(1.0))
    x = torch.randn(2, 4, 8, 8)
    for i, name in enumerate(CANDIDATE_OPS):
        with torch.no_grad():
            cell.alpha.fill_(float("-inf"))
            cell.alpha[i] = 0.0
        torch.testing.assert_close(cell(x), cell.ops[i](x), rtol=0, atol=0, msg=name)
    torch.testing.assert_close(cell.ops[CANDIDATE_OPS.index("skip")](x), x)


def test_generator_keeps_the_masks_size_and_separates_a_from_g():
    torch.manual_seed(0)
    g = SearchableGenerator(TINY)
    masks = torch.randint(0, 3, (2, 16, 16))
    masks[0, :2] = 255
    out = g.paint(masks, torch.randn(2, 1, 16, 16))
    assert out.shape == (2, 3, 16, 16) and out.abs().max() <= 1
    bigger = g.paint(torch.randint(0, 3, (1, 32, 32)), torch.randn(1, 1, 32, 32))
    assert bigger.shape == (1, 3, 32, 32), "fully convolutional: the image takes the mask's spatial size"
    arch, weights = g.arch_parameters(), g.weight_parameters()
    assert len(arch) == 2 * TINY.depth + 1 and all(a.shape == (len(CANDIDATE_OPS),) for a in arch)
    assert {id(p) for p in arch}.isdisjoint(id(p) for p in weights)
    assert len(arch) + len(weights) == len(list(g.parameters()))
    assert all(abs(sum(w.values()) - 1) < 1e-6 for w in g.arch_weights().values())


def test_a_wrong_class_count_is_a_clear_error():
    g = SearchableGenerator(TINY)
    with pytest.raises(ValueError, match=r"class ids \[0, 5\] do not fit a generator for n_classes=3"):
        g.paint(torch.tensor([[[0, 5], [5, 0]]]).repeat(1, 8, 8), torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="GenSegConfig.ops"):
        GenSegConfig(ops=("conv3", "conv7"))
    with pytest.raises(ValueError, match="divisible by 2\\*\\*depth"):
        GenSegConfig(resolution=20, depth=3)


def test_patch_discriminator_and_generator_round_trip(tmp_path):
    d = PatchDiscriminator(3 + 3, channels=4, layers=2)
    assert d(torch.randn(2, 6, 16, 16)).shape[:2] == (2, 1)
    torch.manual_seed(1)
    g = SearchableGenerator(TINY)
    with torch.no_grad():
        g.mid.alpha.copy_(torch.tensor([2.0, 0.0, -1.0, 0.5]))
    path = save_generator(tmp_path / "g.pt", g)
    loaded = load_generator(path)
    masks, noise = torch.randint(0, 3, (1, 16, 16)), torch.randn(1, 1, 16, 16)
    torch.testing.assert_close(loaded.paint(masks, noise), g.eval().paint(masks, noise))
    assert loaded.arch_weights() == g.arch_weights(), "A travels in the file"
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(CheckpointError, match="bad.pt is corrupt"):
        load_generator(tmp_path / "bad.pt")
