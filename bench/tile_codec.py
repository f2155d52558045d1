"""Tile-store size on the demo slides, and what JPEG quality the store should re-encode at.

    python bench/tile_codec.py [--slide demo_03] [--qualities 75 80 85 90 95] [--stores demo_01 demo_02 ...]

Part 1 (``--stores``, default all four demo slides): each slide tiled with the default settings into a JPEG store
and a lossless (Blosc) store; prints store MB, store/slide ratio, how many kept tiles were copied as the slide's own
bytes, and the largest pixel difference between the two stores (0 means downstream steps see identical pixels).

Tiles a demo slide (written by the scanner stand-in at JPEG quality 85) with the lossless store, then re-encodes the
kept tiles at each quality and reports, per quality: mean and 5th-percentile PSNR against the lossless tiles, bytes
per tile relative to the slide's own JPEG bytes for the same area (what byte passthrough stores), and encode time.
Re-encoding only happens where tiles cannot be copied (resized to a target mpp, or off the slide's tile grid);
the default should stay well inside the source's own JPEG noise while not costing more bytes than the source.

Part 2 sweeps the quality on tiles that are re-encoded: tiles on the slide's own 8x8 JPEG block grid (e.g. a
stride that is off the slide's tile grid) and tiles resized to another mpp (the usual case).

Last line: ``store_ratio_demo=<x> blosc_ratio_demo=<x> max_diff=<x> default_quality=<q> psnr_db=<x> psnr_p5_db=<x>
bytes_vs_source=<x>``: store ratios over all measured demo slides together, and for resized tiles the lowest
quality whose 5th-percentile PSNR is at least 40 dB.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ops.slides.demo_slides import DEMO_SLIDES, write_demo_slide  # noqa: E402
from ops.slides.extraction import extract_tiles  # noqa: E402
from ops.slides.jpeg_codec import decode_jpeg, encode_jpeg  # noqa: E402
from ops.slides.reader import open_slide  # noqa: E402
from ops.slides.tile_store import open_tile_array, store_bytes  # noqa: E402
from ops.slides.tiling import ParallelSpec, TilingParams, plan_grid  # noqa: E402

CACHE = Path(__file__).resolve().parent / "out"
PSNR_FLOOR = 40.0


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse)) if mse else 99.0


def _slide(name: str) -> Path:
    spec = next(s for s in DEMO_SLIDES if s.name == name)
    path = CACHE / f"{spec.name}.svs"
    if not path.exists():
        write_demo_slide(spec, CACHE)
    return path


def compare_stores(names: list[str]) -> tuple[float, float, int]:
    """JPEG vs lossless store of each slide; returns (jpeg ratio, blosc ratio, largest pixel difference) overall."""
    totals = {"jpeg": 0, "blosc": 0, "slide": 0}
    worst = 0
    print("slide     slide_MB  jpeg_MB  jpeg_ratio  blosc_MB  blosc_ratio  copied/kept  max_diff")
    for name in names:
        slide = _slide(name)
        arrays, sizes, copied = {}, {}, ""
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            for codec in ("jpeg", "blosc"):
                params = TilingParams(tile_codec=codec)
                with open_slide(slide) as reader:
                    plan = plan_grid(reader, params)
                res = extract_tiles(str(slide), plan, params, ParallelSpec(workers=2), Path(tmp) / codec, "b", "s")
                arrays[codec] = open_tile_array(Path(tmp) / codec / "tiles.zarr")[:]
                sizes[codec] = store_bytes(Path(tmp) / codec / "tiles.zarr")
                if codec == "jpeg":
                    copied = f"{res.counts['copied']}/{res.counts['kept']}"
        diff = int(np.abs(arrays["jpeg"].astype(np.int16) - arrays["blosc"]).max()) if len(arrays["jpeg"]) else 0
        worst = max(worst, diff)
        n = slide.stat().st_size
        totals["jpeg"] += sizes["jpeg"]
        totals["blosc"] += sizes["blosc"]
        totals["slide"] += n
        print(
            f"{name:8s}  {n / 1e6:8.1f}  {sizes['jpeg'] / 1e6:7.1f}  {sizes['jpeg'] / n:10.3f}  "
            f"{sizes['blosc'] / 1e6:8.1f}  {sizes['blosc'] / n:11.3f}  {copied:>11s}  {diff:8d}"
        )
    return totals["jpeg"] / totals["slide"], totals["blosc"] / totals["slide"], worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slide", default="demo_03", choices=[s.name for s in DEMO_SLIDES])
    ap.add_argument("--qualities", type=int, nargs="+", default=[75, 80, 85, 90, 95])
    ap.add_argument("--stores", nargs="*", default=[s.name for s in DEMO_SLIDES], help="slides for part 1")
    args = ap.parse_args()
    jpeg_ratio, blosc_ratio, max_diff = compare_stores(args.stores) if args.stores else (np.nan, np.nan, -1)
    slide = _slide(args.slide)
    aligned, res = _lossless_tiles(slide, TilingParams(tile_codec="blosc"))
    with open_slide(slide) as reader:
        source = [
            sum(map(len, reader.jpeg_streams(int(x), int(y), 0, 512)))
            for x, y in zip(res.table.x, res.table.y, strict=True)
        ]
    source_bytes = float(np.mean(source))
    print(f"slide {slide.name}: the slide's own JPEG (q85) {source_bytes / 1e3:.1f} kB per 512-px tile")
    print(f"re-encoding {len(aligned)} kept tiles on the slide's own 8x8 block grid (offset tiles, stride):")
    _sweep(aligned, source_bytes, args.qualities)
    resized, _ = _lossless_tiles(slide, TilingParams(tile_codec="blosc", target_mpp=0.75))
    print(f"re-encoding {len(resized)} kept tiles resized to 0.75 um/px (768 -> 512 px, Lanczos; bytes vs the source's")
    print("bytes for the same slide area, 2.25 source tiles):")
    rows = _sweep(resized, source_bytes * 2.25, args.qualities)
    q, psnr, p5, ratio = next((r for r in rows if r[2] >= PSNR_FLOOR), rows[-1])
    print(
        f"store_ratio_demo={jpeg_ratio:.3f} blosc_ratio_demo={blosc_ratio:.3f} max_diff={max_diff} "
        f"default_quality={q} psnr_db={psnr:.2f} psnr_p5_db={p5:.2f} bytes_vs_source={ratio:.2f}"
    )


def _lossless_tiles(slide: Path, params: TilingParams):
    with open_slide(slide) as reader:
        plan = plan_grid(reader, params)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        res = extract_tiles(str(slide), plan, params, ParallelSpec(workers=2), Path(tmp) / "t", "b", "sl-b")
        return open_tile_array(Path(tmp) / "t" / "tiles.zarr")[:], res


def _sweep(tiles: np.ndarray, source_bytes: float, qualities: list[int]) -> list[tuple]:
    print("  quality  psnr_db  psnr_p5_db  kB/tile  bytes_vs_source  encode_ms/tile")
    rows = []
    for q in qualities:
        start = time.perf_counter()
        streams = [encode_jpeg(t, q) for t in tiles]
        ms = (time.perf_counter() - start) / len(tiles) * 1e3
        psnr = np.array([_psnr(t, decode_jpeg(s)) for t, s in zip(tiles, streams, strict=True)])
        size = float(np.mean([len(s) for s in streams]))
        rows.append((q, psnr.mean(), np.percentile(psnr, 5), size / source_bytes))
        print(
            f"  {q:7d}  {psnr.mean():7.2f}  {np.percentile(psnr, 5):10.2f}  {size / 1e3:7.1f}  "
            f"{size / source_bytes:15.2f}  {ms:14.2f}"
        )
    return rows


if __name__ == "__main__":
    main()
