"""Image-space autoencoders ``ae-mse`` and ``ae-ssim``: config, torch model, estimators."""

from fae.methods.ae.config import AEConfig
from fae.methods.ae.estimator import AEMSE, AESSIM
from fae.methods.ae.torch_model import ImageAutoencoder, MSEAutoencoder, SSIMAutoencoder

__all__ = ["AEConfig", "AEMSE", "AESSIM", "ImageAutoencoder", "MSEAutoencoder", "SSIMAutoencoder"]
