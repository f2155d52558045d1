"""The one wrapper around Dagster internals (staleness) answers right, and says so loudly when Dagster moves."""

from __future__ import annotations

import dagster as dg

from pipelines.staleness import CHECKED_WITH_DAGSTER, staleness


def _defs(code_version: str, value: dict) -> dg.Definitions:
    @dg.asset(code_version=code_version)
    def upstream() -> dg.MaterializeResult:
        return dg.MaterializeResult(data_version=dg.DataVersion(str(value["v"])))

    @dg.asset(deps=[upstream], code_version="1")
    def downstream() -> None:
        return None

    return dg.Definitions(assets=[upstream, downstream])


def test_dagster_is_the_version_the_internals_were_read_in():
    minor = ".".join(dg.__version__.split(".")[:2])
    assert minor == CHECKED_WITH_DAGSTER, (
        f"Dagster {dg.__version__} is installed, but pipelines/staleness.py calls dagster._core internals read in "
        f"{CHECKED_WITH_DAGSTER}: check CachingStaleStatusResolver and LoadingContextForTest in the new version (or "
        "a public staleness API), run this file, then update CHECKED_WITH_DAGSTER"
    )


def test_missing_fresh_stale_by_data_and_by_code():
    instance = dg.DagsterInstance.ephemeral()
    value = {"v": 1}
    defs = _defs("1", value)
    status = staleness(instance, defs.get_repository_def())
    assert (status("upstream"), status("downstream")) == ("missing", "missing")

    assert dg.materialize(
        [defs.get_assets_def("upstream"), defs.get_assets_def("downstream")], instance=instance
    ).success
    status = staleness(instance, defs.get_repository_def())
    assert (status("upstream"), status("downstream")) == ("fresh", "fresh")

    value["v"] = 2  # new upstream data: downstream is stale, upstream itself is fresh
    assert dg.materialize([defs.get_assets_def("upstream")], instance=instance).success
    status = staleness(instance, defs.get_repository_def())
    assert (status("upstream"), status("downstream")) == ("fresh", "stale")

    changed = _defs("2", value)  # new upstream code
    status = staleness(instance, changed.get_repository_def())
    assert status("upstream") == "stale"
