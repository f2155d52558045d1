"""Whole-slide images to tiles: the slide reader (openslide/tifffile), the slide registry, the tissue mask, the tile
grid and its QC, extraction into zarr tile stores, crop samplers over kept tiles, and the generated demo slides.
"""
