"""How fast polygons become class-id pixels, and whether every pixel centre lands on the right side of the outline.

    python bench/rasterize.py [--quick] [--size 2048] [--repeats 3]

Two workloads on a ``size x size`` canvas, both painted in one ``ops.labelling.rasterize.paint_polygons`` call (what
GeoJSON import and slide annotations do):

- ``outline``: one slide-scale annotation, a wobbly ring of 4,000 vertices with three holes (a pathologist's tumour
  outline with excluded areas); cost grows with the bounding box and the vertex count.
- ``small``: 2,000 small polygons of 6-12 vertices (nuclei, glomeruli), painted one after another.

Baseline in the same run: the pixel-centre rule evaluated directly (``shapely.contains_xy`` on every pixel centre
of each polygon's bounding box), which also gives ``agreement`` (share of canvas pixels where both agree; vertices
are random floats, so no pixel centre lies on an edge and the rule has no ties). Last line:
``outline_ms=<x> small_ms=<x> outline_speedup=<x> small_speedup=<x> agreement=<min>``; speedups are vs the baseline.
Timings are wall-clock on a shared machine: compare ratios.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import shapely

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ops.labelling.rasterize import paint_polygons  # noqa: E402


def wobbly_ring(rng: np.random.Generator, centre: tuple[float, float], radius: float, n: int) -> np.ndarray:
    """A closed star-shaped ring of ``n`` vertices (x, y) whose radius wanders by up to 15 %."""
    angle = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = radius * (1 + 0.15 * np.sin(angle * rng.integers(3, 9)) * rng.uniform(0.5, 1, n))
    ring = np.column_stack([centre[0] + r * np.cos(angle), centre[1] + r * np.sin(angle)])
    return np.vstack([ring, ring[:1]])


def workloads(size: int, n_small: int, seed: int = 0) -> dict[str, list[list[np.ndarray]]]:
    rng = np.random.default_rng(seed)
    c = size / 2
    outline = [wobbly_ring(rng, (c, c), 0.42 * size, 4000)]
    outline += [
        wobbly_ring(rng, (c + dx * size, c + dy * size), 0.06 * size, 200)
        for dx, dy in ((-0.2, 0), (0.2, 0.1), (0, -0.2))
    ]
    small = []
    for _ in range(n_small):
        centre = rng.uniform(0, size, 2)
        small.append([wobbly_ring(rng, (centre[0], centre[1]), rng.uniform(3, 20), int(rng.integers(6, 13)))])
    return {"outline": [outline], "small": small}


def paint_all(polygons: list[list[np.ndarray]], size: int) -> np.ndarray:
    return paint_polygons(np.zeros((size, size), np.uint8), [(rings, 1 + k % 250) for k, rings in enumerate(polygons)])


def reference(polygons: list[list[np.ndarray]], size: int) -> np.ndarray:
    """Pixel centres tested one by one against each polygon (even-odd over rings = exterior minus holes here)."""
    mask = np.zeros((size, size), np.uint8)
    for k, rings in enumerate(polygons):
        poly = shapely.Polygon(rings[0], rings[1:])
        x0, y0, x1, y1 = (int(np.clip(v, 0, size)) for v in np.array(poly.bounds) + [-1, -1, 1, 1])
        ys, xs = np.mgrid[y0:y1, x0:x1]
        inside = shapely.contains_xy(poly, xs.ravel() + 0.5, ys.ravel() + 0.5).reshape(xs.shape)
        mask[y0:y1, x0:x1][inside] = 1 + k % 250
    return mask


def timed(fn, repeats: int) -> tuple[float, np.ndarray]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="512-px canvas, 200 small polygons, one repeat")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size, n_small, repeats = (512, 200, 1) if args.quick else (args.size, 2000, args.repeats)
    results = {}
    for name, polygons in workloads(size, n_small).items():
        ms, got = timed(lambda polygons=polygons: paint_all(polygons, size), repeats)
        ref_ms, want = timed(lambda polygons=polygons: reference(polygons, size), 1)
        agreement = float((got == want).mean())
        results[name] = (ms, ref_ms / ms, agreement)
        print(
            f"{name}: {len(polygons)} polygons, paint {ms:.1f} ms, pixel-centre baseline {ref_ms:.1f} ms, "
            f"agreement {agreement:.6f}"
        )
    print(
        f"outline_ms={results['outline'][0]:.2f} small_ms={results['small'][0]:.2f} "
        f"outline_speedup={results['outline'][1]:.2f} small_speedup={results['small'][1]:.2f} "
        f"agreement={min(r[2] for r in results.values()):.6f}"
    )


if __name__ == "__main__":
    main()
