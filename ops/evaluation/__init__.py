"""Proof of value: the downstream segmenter and the metrics (Dice, confusion, mask agreement) that compare real-only
and real + synthetic training on held-out real slides.
"""
