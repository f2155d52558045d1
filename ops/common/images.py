"""Pictures for people: contact sheets of uint8 images, shown in Dagster metadata and MLflow by every stage."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def image_grid_png(images: np.ndarray, columns: int = 8, labels: bool = False, scale: int = 1) -> bytes:
    """A contact sheet of uint8 ``[N, R, R, 3]`` images as PNG (index labels for choosing what to annotate)."""
    n, r = len(images), images.shape[1]
    rows = -(-n // columns)
    pad = 2
    sheet = np.full((rows * (r + pad) + pad, columns * (r + pad) + pad, 3), 255, np.uint8)
    for i, img in enumerate(images):
        y, x = pad + (i // columns) * (r + pad), pad + (i % columns) * (r + pad)
        sheet[y : y + r, x : x + r] = img
    pic = Image.fromarray(sheet)
    if scale > 1:
        pic = pic.resize((pic.width * scale, pic.height * scale), Image.Resampling.NEAREST)
    if labels:
        draw = ImageDraw.Draw(pic)
        for i in range(n):
            y, x = pad + (i // columns) * (r + pad), pad + (i % columns) * (r + pad)
            draw.text((x * scale + 2, y * scale + 1), str(i), fill=(0, 0, 0))
    buf = io.BytesIO()
    pic.save(buf, format="PNG")
    return buf.getvalue()
