"""The variational image-space autoencoder baseline: config, torch model, estimator."""

from fae.methods.vae.config import VAEConfig
from fae.methods.vae.estimator import VAE
from fae.methods.vae.torch_model import VAEModule

__all__ = ["VAE", "VAEConfig", "VAEModule"]
