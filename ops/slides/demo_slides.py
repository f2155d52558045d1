"""Demo whole-slide images made from real tissue.

The demo and the tests need slides that behave like scanner output (tiled, JPEG-compressed, pyramidal TIFF with
microns-per-pixel that openslide reads) without shipping gigabytes. The tissue is the real IHC image that ships in
scikit-image, resampled through a slide-specific, spatially varying warp (rotation, scale and a smooth random
displacement field) and a slide-specific stain jitter in HED space, so no two slides share a tile: later train/test
splits by slide would otherwise leak. Background is white glass with a tint, a vignetting gradient, dust specks and
pen marks, so the tissue detector and QC flags face the usual nuisances.

Everything is generated one 512-pixel block at a time, so memory stays flat from 4k to 16k slides.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage
from skimage import color, data, draw

BLOCK = 512  # generation block and JPEG tile grid unit (level-0 pixels)
TIFF_TILE = 256  # TIFF tile edge, as most scanners write


@dataclass(frozen=True)
class DemoSlideSpec:
    """What one demo slide looks like.

    Attributes:
        name: File stem (the slide's partition key).
        width: Level-0 width in pixels (rounded up to a multiple of 512).
        height: Level-0 height in pixels (rounded up to a multiple of 512).
        seed: Seeds every random choice: the same spec always gives the same bytes.
        mpp: Microns per pixel at level 0; ``None`` writes a slide without resolution (for error-path tests).
        tissue_share: Target fraction of the slide area covered by tissue; 0 gives an all-background slide.
        levels: Pyramid levels (downsample 4 between levels); 1 writes a single-level (flat) TIFF.
        pen_marks: Number of pen strokes drawn on the glass.
        dust_specks: Number of dark dust specks.
        properties: Extra ``key = value`` pairs for the Aperio description (e.g. identifying fields in privacy tests).
        label_text: If set, a fake slide-label image carrying this text is stored as an associated image.
    """

    name: str
    width: int
    height: int
    seed: int
    mpp: float | None = 0.5
    tissue_share: float = 0.35
    levels: int = 3
    pen_marks: int = 2
    dust_specks: int = 40
    properties: dict[str, str] = field(default_factory=dict)
    label_text: str | None = None


# The demo set: four slides from ~4k to ~16k pixels, each at least half background.
DEMO_SLIDES: tuple[DemoSlideSpec, ...] = (
    DemoSlideSpec("demo_01", 4096, 4096, seed=11),
    DemoSlideSpec("demo_02", 6144, 4096, seed=22),
    DemoSlideSpec("demo_03", 8192, 8192, seed=33),
    DemoSlideSpec("demo_04", 16384, 12288, seed=44, tissue_share=0.3),
)


class _SlideContent:
    """Per-slide random fields, evaluated block by block (all coordinates in level-0 pixels)."""

    FIELD_STEP = 64  # level-0 pixels per cell of the low-resolution random fields

    def __init__(self, spec: DemoSlideSpec, width: int, height: int) -> None:
        rng = np.random.default_rng(spec.seed)
        self.spec = spec
        self.source = data.immunohistochemistry().astype(np.float32)  # real IHC tissue, 512x512x3
        gh, gw = height // self.FIELD_STEP + 2, width // self.FIELD_STEP + 2
        self.tissue_field = self._tissue_field(rng, gh, gw, spec.tissue_share)
        # Smooth displacement field (in source pixels): the warp varies across the slide, so tiles never repeat.
        self.disp = np.stack([ndimage.gaussian_filter(rng.normal(size=(gh, gw)), 3) for _ in range(2)])
        self.disp *= 60.0 / max(float(np.abs(self.disp).max()), 1e-6)
        # Two independent warps blended by a sharp smooth field: breaks the mirror symmetry of a single source.
        self.angle = rng.uniform(0, 2 * np.pi, size=2)
        self.scale = rng.uniform(0.85, 1.2, size=2)
        self.offset = rng.uniform(0, 1024, size=(2, 2))
        mix = ndimage.gaussian_filter(rng.normal(size=(gh, gw)), 2.5)
        self.mix = (1 / (1 + np.exp(-8 * mix / (mix.std() + 1e-6)))).astype(np.float32)
        # Stain jitter in HED optical-density space (Tellez et al.): per-slide scale and shift per stain.
        self.hed_alpha = rng.uniform(0.8, 1.2, size=3)
        self.hed_beta = rng.uniform(-0.03, 0.03, size=3)
        self.glass = np.array([242, 240, 244], np.float32) + rng.uniform(-4, 4, size=3)
        self.pen = self._pen_raster(rng, gh, gw, spec.pen_marks)
        self.pen_colour = np.array([[40, 140, 70], [40, 70, 160], [30, 30, 40]], np.float32)[
            rng.integers(0, 3, size=max(spec.pen_marks, 1))
        ]
        self.specks = np.column_stack(
            [
                rng.uniform(0, height, spec.dust_specks),
                rng.uniform(0, width, spec.dust_specks),
                rng.uniform(2, 7, spec.dust_specks),
            ]
        )
        self.width, self.height = width, height

    @staticmethod
    def _tissue_field(rng: np.random.Generator, gh: int, gw: int, share: float) -> np.ndarray:
        """A smooth field whose positive part covers ``share`` of the slide, in a few blob-shaped pieces."""
        if share <= 0:
            return np.full((gh, gw), -1.0, np.float32)
        noise = ndimage.gaussian_filter(rng.normal(size=(gh, gw)), sigma=max(gh, gw) / 14)
        # Keep a glass margin around the edges, as on real slides.
        yy, xx = np.mgrid[0:gh, 0:gw]
        edge = np.minimum.reduce([yy, xx, gh - 1 - yy, gw - 1 - xx]) / max(min(gh, gw) * 0.08, 1)
        noise = noise - noise.std() * 2 * np.clip(1 - edge, 0, 1)
        threshold = np.quantile(noise, 1 - share)
        return ((noise - threshold) / (noise.std() + 1e-6)).astype(np.float32)

    @staticmethod
    def _pen_raster(rng: np.random.Generator, gh: int, gw: int, n_strokes: int) -> np.ndarray:
        """Pen strokes as smooth curves on the low-res grid; value = stroke index + 1 (0 = no ink)."""
        raster = np.zeros((gh * 4, gw * 4), np.uint8)  # 16 level-0 px per cell
        for k in range(n_strokes):
            t = np.linspace(0, 1, 200)
            y0, x0 = rng.uniform(0.1, 0.9) * gh * 4, rng.uniform(0.1, 0.9) * gw * 4
            length = rng.uniform(0.1, 0.25) * min(gh, gw) * 4
            a = rng.uniform(0, 2 * np.pi)
            ys = y0 + np.sin(a) * length * t + np.sin(t * 6) * length * 0.08
            xs = x0 + np.cos(a) * length * t
            rr, cc = np.round(ys).astype(int), np.round(xs).astype(int)
            ok = (rr >= 0) & (rr < raster.shape[0]) & (cc >= 0) & (cc < raster.shape[1])
            stroke = np.zeros(raster.shape, bool)
            stroke[rr[ok], cc[ok]] = True
            raster[ndimage.binary_dilation(stroke, iterations=2)] = k + 1
        return raster

    def _sample_field(self, grid: np.ndarray, ys: np.ndarray, xs: np.ndarray, step: float, order: int = 1):
        return ndimage.map_coordinates(grid, [ys / step, xs / step], order=order, mode="nearest")

    def block(self, by: int, bx: int) -> np.ndarray:
        """Render the level-0 block whose top-left corner is (by, bx); returns uint8 [BLOCK, BLOCK, 3]."""
        ys, xs = np.mgrid[by : by + BLOCK, bx : bx + BLOCK].astype(np.float32)
        rng = np.random.default_rng([self.spec.seed, by, bx])
        tissue = self._sample_field(self.tissue_field, ys, xs, self.FIELD_STEP)
        tissue += rng.normal(0, 0.04, size=tissue.shape).astype(np.float32)  # ragged tissue edges
        alpha = np.clip(tissue * 6, 0, 1)[..., None]
        out = self.glass + rng.normal(0, 1.5, size=(BLOCK, BLOCK, 3)).astype(np.float32)
        out -= 6 * (np.hypot(ys / self.height - 0.5, xs / self.width - 0.5) ** 2)[..., None]  # vignetting
        if alpha.max() > 0:
            out = out * (1 - alpha) + self._tissue(ys, xs) * alpha
        pen = self._sample_field(self.pen, ys, xs, 16, order=0)
        if pen.any():
            ink = self.pen_colour[np.maximum(pen.astype(int) - 1, 0)]
            out = np.where(pen[..., None] > 0, out * (ink / 255.0) * 1.1, out)
        for cy, cx, r in self.specks:
            if by - r <= cy < by + BLOCK + r and bx - r <= cx < bx + BLOCK + r:
                rr, cc = draw.disk((cy - by, cx - bx), r, shape=(BLOCK, BLOCK))
                out[rr, cc] = out[rr, cc] * 0.35
        return np.clip(out, 0, 255).astype(np.uint8)

    def _tissue(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Warped, stain-jittered IHC texture at the given level-0 coordinates."""
        dy = self._sample_field(self.disp[0], ys, xs, self.FIELD_STEP)
        dx = self._sample_field(self.disp[1], ys, xs, self.FIELD_STEP)
        rgb = np.zeros((*ys.shape, 3), np.float32)
        weight = self._sample_field(self.mix, ys, xs, self.FIELD_STEP)
        for k, w in enumerate((weight, 1 - weight)):
            if w.max() < 1e-3:
                continue
            c, s = np.cos(self.angle[k]) / self.scale[k], np.sin(self.angle[k]) / self.scale[k]
            sy = c * ys - s * xs + self.offset[k, 0] + dy
            sx = s * ys + c * xs + self.offset[k, 1] + dx
            for ch in range(3):
                rgb[..., ch] += w * ndimage.map_coordinates(self.source[..., ch], [sy, sx], order=1, mode="mirror")
        hed = color.rgb2hed(np.clip(rgb / 255.0, 0, 1))
        hed = hed * self.hed_alpha + self.hed_beta * np.array([0.05, 0.02, 0.05])
        return (np.clip(color.hed2rgb(hed), 0, 1) * 255).astype(np.float32)


def _aperio_description(spec: DemoSlideSpec, width: int, height: int) -> str:
    fields = [f"AppMag = {20 if (spec.mpp or 0.5) >= 0.4 else 40}"]
    if spec.mpp is not None:
        fields.append(f"MPP = {spec.mpp}")
    fields += [f"{k} = {v}" for k, v in spec.properties.items()]
    size = f"{width}x{height}"
    head = f"Aperio Image Library v12.0.15\r\n{size} [0,0 {size}] ({TIFF_TILE}x{TIFF_TILE}) JPEG/RGB Q=85"
    return "|".join([head, *fields])


def _label_image(text: str) -> np.ndarray:
    """A small fake slide label: text-like dark bars on white plus the text's bytes as pixel values."""
    label = np.full((256, 512, 3), 250, np.uint8)
    codes = np.frombuffer(text.encode(), np.uint8)
    label[100 : 100 + 8, 20 : 20 + len(codes)] = codes[None, :, None]
    return label


def write_demo_slide(spec: DemoSlideSpec, out_dir: str | os.PathLike[str]) -> Path:
    """Write one demo slide as a tiled, JPEG-compressed, pyramidal Aperio-style TIFF (``.svs``).

    Args:
        spec: What to draw.
        out_dir: Folder for the slide; the file appears atomically (temp file, then rename).

    Returns:
        Path of the written slide, ``out_dir/<spec.name>.svs``.
    """
    width = -(-spec.width // BLOCK) * BLOCK
    height = -(-spec.height // BLOCK) * BLOCK
    content = _SlideContent(spec, width, height)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{spec.name}.svs"
    levels = [np.zeros((height // 4**k, width // 4**k, 3), np.uint8) for k in range(1, spec.levels)]

    def level0_tiles() -> Iterator[np.ndarray]:
        for by in range(0, height, BLOCK):
            band = np.concatenate([content.block(by, bx) for bx in range(0, width, BLOCK)], axis=1)
            if levels:  # level 1 (downsample 4) is filled as level 0 streams past
                small = band.reshape(BLOCK // 4, 4, width // 4, 4, 3).mean(axis=(1, 3))
                levels[0][by // 4 : (by + BLOCK) // 4] = np.round(small).astype(np.uint8)
            for ty in range(0, BLOCK, TIFF_TILE):
                for tx in range(0, width, TIFF_TILE):
                    yield band[ty : ty + TIFF_TILE, tx : tx + TIFF_TILE]

    def write_kwargs(ds: int, description: str | None) -> dict:
        kw = dict(
            tile=(TIFF_TILE, TIFF_TILE),
            compression="jpeg",
            compressionargs={"level": 85},
            photometric="rgb",
            metadata=None,
            description=description,
        )
        if spec.mpp is not None:
            kw.update(resolution=(1e4 / (spec.mpp * ds),) * 2, resolutionunit="CENTIMETER")
        return kw

    fd, tmp = tempfile.mkstemp(suffix=".svs.tmp", dir=out_dir)
    os.close(fd)
    try:
        with tifffile.TiffWriter(tmp, bigtiff=width * height > 2**31) as tw:
            tw.write(
                level0_tiles(),
                shape=(height, width, 3),
                dtype=np.uint8,
                **write_kwargs(1, _aperio_description(spec, width, height)),
            )
            for k in range(1, spec.levels):
                if k > 1:  # deeper levels come from the one above, block-averaged
                    up = levels[k - 2]
                    h, w = levels[k - 1].shape[:2]
                    levels[k - 1][:] = np.round(up[: h * 4, : w * 4].reshape(h, 4, w, 4, 3).mean(axis=(1, 3)))
                tw.write(levels[k - 1], **write_kwargs(4**k, ""))
            if spec.label_text is not None:  # Aperio stores associated images as stripped pages
                tw.write(
                    _label_image(spec.label_text),
                    photometric="rgb",
                    metadata=None,
                    description=f"Aperio Image Library v12.0.15\r\nlabel 512x256|{spec.label_text}",
                    subfiletype=1,
                )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def write_demo_slides(out_dir: str | os.PathLike[str], specs: tuple[DemoSlideSpec, ...] = DEMO_SLIDES) -> list[Path]:
    """Write every slide of ``specs`` into ``out_dir`` and return their paths."""
    return [write_demo_slide(spec, out_dir) for spec in specs]
