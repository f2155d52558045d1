"""Labels for generated and real images: class maps, PNG and QuPath GeoJSON import, slide annotations cut onto tiles,
the demo stand-in annotator, the generator feature store (zarr) and the pixel-classifier ensemble.
"""
