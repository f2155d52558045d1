"""Pieces every stage shares: strict config dicts, the torch device, atomic file writes, image grids and the one
training-step loop. Nothing here knows about slides, GANs or diffusion.
"""
