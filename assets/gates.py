"""What every quality gate (asset check) shares: read the asset's own number, compare, report both.

Each stage's assets module ends with its gates (``# Quality gates``). A gate never recomputes what its asset
measured: it reads the number from the asset's latest materialization metadata (of the run's partition, for
per-slide and per-batch assets), compares it with a threshold from the check's config, and puts the number and the
threshold into the check's metadata, so a failed gate says what was measured and what was required. Blocking gates
fail with ERROR severity, which stops the downstream assets of the same run; the others only warn.
"""

from __future__ import annotations

import math
import operator
from typing import Literal

import dagster as dg

_RELATIONS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def latest_metadata(context: dg.AssetCheckExecutionContext, asset: dg.AssetKey) -> dict[str, object]:
    """Metadata values of ``asset``'s latest materialization; of the run's partition when the run has one."""
    partition = context.partition_key if context.has_partition_key else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset, asset_partitions=[partition] if partition else None), limit=1
    ).records
    if not records:
        where = f" partition {partition!r}" if partition else ""
        raise ValueError(
            f"{asset.to_user_string()}{where} has no materialization to check; materialize it before its checks"
        )
    return {key: value.value for key, value in records[0].asset_materialization.metadata.items()}


def number(metadata: dict[str, object], key: str, asset: str) -> float:
    """A numeric metadata value; a missing key is a code error on the asset's side, named as such."""
    if key not in metadata:
        raise KeyError(f"{asset}'s materialization has no metadata {key!r}; the asset must record it for its gate")
    return float(metadata[key])  # type: ignore[arg-type]


def gate(
    value_key: str,
    value: float,
    relation: Literal[">", ">=", "<", "<="],
    threshold_key: str,
    threshold: float,
    what: str,
    blocking: bool = True,
    extra: dict[str, float | str] | None = None,
) -> dg.AssetCheckResult:
    """Pass when ``value`` stands in ``relation`` to ``threshold``; NaN fails (an unmeasured number lets nothing pass).

    ``what`` says in words what the gate asks for; it leads the check's description in the UI.
    """
    passed = _RELATIONS[relation](value, threshold)
    shown = "not measured (NaN)" if math.isnan(value) else f"{value:.4g}"
    verdict = "ok" if passed else "FAILED" if blocking else "WARNING"
    return dg.AssetCheckResult(
        passed=bool(passed),
        severity=dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN,
        metadata={value_key: value, threshold_key: threshold, **(extra or {})},
        description=f"{verdict}: {what}: {value_key} = {shown}, required {relation} {threshold:.4g}",
    )
