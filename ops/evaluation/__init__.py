"""Proof of value: leak-free real splits (``real_split``), the segmenter (``segmenter``, MONAI or hand-written) and
its losses, the classical-augmentation baseline (``stain_jitter``), the label judge (``judge``), the low-label learning
curve (``learning_curve``) and the one function the asset and the bench share (``downstream``), plus the metrics
(Dice, Jaccard, confusion, mask agreement).
"""
