"""Run presets (config files under version control) for the jobs: ``demo`` and ``paper``."""

from pathlib import Path

import yaml

PRESET_DIR = Path(__file__).resolve().parent / "presets"
PRESETS = ("demo", "paper")


def load_preset(name: str) -> dict:
    """Run config of a preset; unknown names list the known ones."""
    path = PRESET_DIR / f"{name}.yaml"
    if name not in PRESETS or not path.exists():
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return yaml.safe_load(path.read_text())


def ops_subset(config: dict, asset_names: list[str]) -> dict:
    """The part of a preset's run config that concerns ``asset_names`` (a job rejects config for other ops)."""
    return {"ops": {k: v for k, v in config.get("ops", {}).items() if k in asset_names}}
