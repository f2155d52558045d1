"""Run one benchmark measurement in a fresh Python process, so peak RSS and warm caches never carry over."""

from __future__ import annotations

import json
import subprocess
import sys


def run_child(script: str, spec: dict, label: str) -> dict:
    """Run ``script --child <spec json>`` and return the JSON its last stdout line prints."""
    out = subprocess.run(
        [sys.executable, script, "--child", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"child {label} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
