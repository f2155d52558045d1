"""What a finished in-process run says to the CLI: failed checks and steps in one line each, or an interruption.

``histofactory`` runs jobs in its own process. Dagster turns SIGINT (and SIGTERM, which the CLI maps to it) inside a
step into a step failure with an INTERRUPT source and ends the run as failed, so the instance never keeps a run
that claims to be running; the CLI then stops instead of starting the next stage, says which stage was stopped,
and exits 130 (the shell's code for "interrupted").
"""

from __future__ import annotations

import dagster as dg


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped a run; carries what the user needs to pick up from there."""

    def __init__(self, stage: str, key: str | None, run_id: str | None, status: str | None) -> None:
        where = f"stage '{stage}'" + (f", partition {key}" if key else "")
        run = f"; run {run_id} is {status} in the Dagster instance" if run_id else ""
        super().__init__(
            f"interrupted during {where}{run}. Re-run the same command to continue: finished stages are kept and "
            "trainings resume from their last checkpoint."
        )


def was_interrupted(result: dg.ExecuteInProcessResult) -> bool:
    """Whether a step of the run failed because the process was told to stop (not because of its own error)."""
    return any(
        event.is_step_failure and event.step_failure_data.error_source.value == "INTERRUPT"
        for event in result.all_events
    )


def failure_lines(result: dg.ExecuteInProcessResult) -> list[str]:
    """One line per failed quality gate (with its number and threshold) and per step that raised."""
    lines = [
        f"check {c.asset_key.to_user_string()}.{c.check_name} {c.description}"
        for c in result.get_asset_check_evaluations()
        if not c.passed
    ]
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error is not None:
            error = event.step_failure_data.error
            if error.cls_name != "DagsterAssetCheckFailedError":  # already said, with numbers, above
                lines.append(f"{event.step_key} FAILED - {error.message.strip()[:500]}")
    return lines
