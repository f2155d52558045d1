"""The downstream benchmark in one function, shared by the ``downstream_eval`` asset and ``bench/downstream.py``.

It reads an export folder (the synthetic pairs of each route, their class map and label scores) and the leak-free
real pairs, refuses mismatched class maps, runs the learning curve and returns its tables with the headline numbers.
Both callers therefore measure the same thing; the asset adds Dagster metadata and MLflow, the bench prints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ops.evaluation.learning_curve import (
    BudgetRoute,
    CurveConfig,
    CurveResult,
    Progress,
    SyntheticSource,
    curve_verdict,
    learning_curve,
)
from ops.evaluation.real_split import RealPairs
from ops.export.dataset import mask_routes
from ops.export.label_scores import Labeller

LABEL_SCORES_FILE = "label_scores.json"  # written by the export beside its manifest


def export_class_names(export_dir: str | os.PathLike[str]) -> list[str]:
    """Class names of an export, in mask-value order (``classes.json``)."""
    path = Path(export_dir) / "classes.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not an export folder (no classes.json); point at export/<version>")
    return [c["name"] for c in json.loads(path.read_text())]


def require_same_classes(export_names: Sequence[str], real_names: Sequence[str], export_dir: str | os.PathLike) -> None:
    """Raise when the export's class map differs from the real pairs' (a mask value would mean two things)."""
    if list(export_names) != list(real_names):
        raise ValueError(
            f"{Path(export_dir) / 'classes.json'}: the export's classes {list(export_names)} differ from the real "
            f"pairs' {list(real_names)}; export with the class map the real annotations use (or re-annotate)"
        )


def export_pairs(export_dir: str | os.PathLike[str], route: str, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` kept pairs of one route as uint8 arrays (images ``[N, R, R, 3]``, masks ``[N, R, R]``)."""
    export_dir = Path(export_dir)
    manifest = pd.read_parquet(export_dir / "manifest.parquet")
    rows = manifest[manifest["generator"] == route].head(limit)
    if rows.empty:
        raise ValueError(f"{export_dir}: no pairs of route {route!r}; routes: {sorted(manifest['generator'].unique())}")
    images = np.stack([np.asarray(Image.open(export_dir / p).convert("RGB")) for p in rows["image"]])
    masks = np.stack([np.asarray(Image.open(export_dir / p)) for p in rows["mask"]])
    return images.astype(np.uint8), masks.astype(np.uint8)


def export_routes(export_dir: str | os.PathLike[str]) -> list[str]:
    """Routes (generators) with pairs in an export."""
    return sorted(pd.read_parquet(Path(export_dir) / "manifest.parquet")["generator"].unique())


def label_scores(export_dir: str | os.PathLike[str]) -> dict:
    """The export's per-route label scores (empty when the export predates them)."""
    path = Path(export_dir) / LABEL_SCORES_FILE
    return json.loads(path.read_text()) if path.exists() else {}


@dataclass
class DownstreamResult:
    """The learning curve plus what the headline needs."""

    curve: CurveResult
    verdict: dict
    routes: list[str]
    synthetic_pairs: dict[str, int]
    label_scores: dict
    per_budget: list[str] = field(default_factory=list)  # routes retrained per budget (the rest: exported pairs)

    def headline(self) -> dict[str, float | str]:
        """Flat numbers for metadata, the CLI summary and the bench's last line."""
        out: dict[str, float | str] = {
            "gain_smallest": self.verdict["gain_small"],
            "ci_low_smallest": self.verdict["ci_low_small"],
            "ci_high_smallest": self.verdict["ci_high_small"],
            "best_arm_smallest": self.verdict["best_arm_small"],
            "smallest_budget": self.verdict["smallest_budget"],
            "gain_at_max": self.verdict["gain_at_max"],
        }
        for route, stats in self.label_scores.get("routes", {}).items():
            for key in ("fidelity", "judge_agreement"):
                if key in stats:
                    out[f"{key}_{route}"] = stats[key]
        runs = self.curve.runs
        for route in self.per_budget:  # fidelity of the pairs each route made under the equal label budget
            values = runs.loc[runs["route"] == route, "route_fidelity"] if "route_fidelity" in runs else []
            if len(values) and values.notna().any():
                out[f"budget_fidelity_{route}"] = float(values.mean())
        return out


def run_downstream(
    real: RealPairs,
    class_names: Sequence[str],
    export_dir: str | os.PathLike[str],
    cfg: CurveConfig,
    routes: Sequence[str] | None = None,
    progress: Progress | None = None,
    budget_routes: Mapping[str, BudgetRoute] | None = None,
    labeller: Labeller | None = None,
    workers: int = 1,
) -> DownstreamResult:
    """Learning curve of real vs real + each route's synthetic pairs, scored on the real test crops.

    Args:
        budget_routes: Routes retrained on each budget's crops (``ops.evaluation.budget_routes``); they replace the
            export's pairs of the same route, which carry labels beyond the small budgets. A route that is not in
            the export may be given here too (it is then only measured per budget).
        labeller: Labels any image (the demo stand-in); scores the label fidelity of the retrained routes' pairs.
        workers: Processes training the curve's (budget, seed) points side by side (same result, sooner).

    Raises:
        ValueError: class maps differ, a route has too few pairs, or a budget exceeds the labelled crops.
    """
    require_same_classes(export_class_names(export_dir), class_names, export_dir)
    budget_routes = dict(budget_routes or {})
    if routes is None:
        routes = sorted(set(mask_routes(export_dir)) | set(budget_routes))
    routes = list(dict.fromkeys(routes))  # each route once, in the caller's order
    synthetic: dict[str, SyntheticSource] = {
        r: budget_routes[r] if r in budget_routes else export_pairs(export_dir, r, cfg.synthetic_max) for r in routes
    }
    curve = learning_curve(real, synthetic, class_names, cfg, progress, labeller, workers)
    return DownstreamResult(
        curve,
        curve_verdict(curve.summary),
        routes,
        {r: len(s[0]) if isinstance(s, tuple) else cfg.synthetic_max for r, s in synthetic.items()},
        label_scores(export_dir),
        sorted(budget_routes),
    )
