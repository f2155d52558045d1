"""Contact sheets: one tile per image in a padded grid, optionally enlarged and numbered."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ops.common.images import image_grid_png


def _sheet(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"))


def test_grid_places_each_image_in_its_cell() -> None:
    images = np.stack([np.full((4, 4, 3), 10 * (i + 1), np.uint8) for i in range(5)])
    sheet = _sheet(image_grid_png(images, columns=3))
    assert sheet.shape == (2 * (4 + 2) + 2, 3 * (4 + 2) + 2, 3)  # 2 rows x 3 columns, 2-px white gaps
    for i in range(5):
        y, x = 2 + (i // 3) * 6, 2 + (i % 3) * 6
        assert (sheet[y : y + 4, x : x + 4] == 10 * (i + 1)).all()
    assert (sheet[8:12, 14:18] == 255).all()  # the sixth cell stays empty


def test_scale_and_labels() -> None:
    images = np.zeros((2, 8, 8, 3), np.uint8)
    plain = _sheet(image_grid_png(images, columns=2, scale=3))
    assert plain.shape == (3 * (8 + 4), 3 * (2 * 10 + 2), 3)
    labelled = _sheet(image_grid_png(images + 200, columns=2, labels=True, scale=3))
    assert (labelled[3 * 2 : 3 * 10, 3 * 2 : 3 * 10] < 200).any()  # the index is drawn on the first tile
