"""The mask-conditioned latent diffusion route (DISC): the autoencoder, the mask-conditioned denoiser, DDIM and
spatially-conditioned samplers, and the bank of real mask layouts that drives sampling.
"""
