"""The synthetic dataset: image-mask pairs per generator route, tiles of a class from the federated GAN
(``cgan_route``, no mask), the memorization (near-copy) check, the label scores of every pair (``label_scores``:
fidelity and judge agreement), and the PyTorch ``Dataset``s over an exported version.
"""
