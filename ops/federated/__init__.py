"""Hospitals that cannot share slides train one generator together: class-conditional GANs (cGAN, WGAN-GP, ACGAN with
CNN/ResNet/ViT discriminators), tile classes and site splits, the Flower ServerApp/ClientApp running FedAvg, the
processes of Flower's deployment runtime on loopback, and the paper's downstream tile-classifier check
(``downstream``: real, generated, generated + real; shared by the asset and the bench).
"""
