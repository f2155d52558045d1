"""`backfill stale` re-reads what is left after each stage, so a stage it ran is not reported as still stale."""

from __future__ import annotations

import pytest

from pipelines import backfill

EMPTY = {"slides": [], "factory": [], "export": [], "downstream": []}


def test_a_stale_downstream_check_it_ran_is_not_left_over(monkeypatch: pytest.MonkeyPatch) -> None:
    plans = iter([{**EMPTY, "downstream": ["downstream_eval"]}, EMPTY])
    monkeypatch.setattr(backfill, "stale_plan", lambda instance, repository: next(plans))
    ran: list[str] = []
    left = backfill.run_stale(None, None, "demo", lambda instance, job, keys, label, *a, **kw: ran.append(job))
    assert ran == ["downstream_demo"]
    assert not any(left.values())  # the CLI exits 0 on this


def test_what_stays_stale_after_its_run_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    still = {**EMPTY, "downstream": ["downstream_eval"]}
    plans = iter([still, still])
    monkeypatch.setattr(backfill, "stale_plan", lambda instance, repository: next(plans))
    left = backfill.run_stale(None, None, "demo", lambda *a, **kw: None)
    assert left["downstream"] == ["downstream_eval"]  # the CLI exits 1 on this
