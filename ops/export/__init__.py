"""The synthetic dataset: image-mask pairs per generator route, the memorization (near-copy) check, the label scores
of every pair (``label_scores``: fidelity and judge agreement), and the PyTorch ``Dataset`` over an exported version.
"""
