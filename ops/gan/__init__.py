"""The StyleGAN2-ADA route (HDGAN/DatasetGAN): networks, adaptive augmentation, the trainer and its run loop,
sampling, and the sliced Wasserstein distance / FID used to judge the generator.
"""
