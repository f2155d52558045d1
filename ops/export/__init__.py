"""The synthetic dataset: image-mask pairs per generator route, the memorization (near-copy) check, and the PyTorch
``Dataset`` over an exported version.
"""
