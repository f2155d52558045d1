"""Jobs: named asset selections users launch from the UI, the CLI, sensors and schedules."""

import dagster as dg

tiling_job = dg.define_asset_job(
    "tiling",
    selection=dg.AssetSelection.assets("tile_grid", "tissue_tiles"),
    description="Tissue mask, candidate grid, decoding and filtering of one slide partition.",
)
