"""The variational image autoencoder: the ``ae`` network with a sampled latent and no
normalisation; its residual is the squared error, weighted in the map by the KL gradient."""

from __future__ import annotations

import torch
from torch import Tensor

from fae.methods.ae.torch_model import ImageAutoencoder
from fae.nn.module import weighted_mean
from fae.nn.ssim import blur_matrix


class VAEModule(ImageAutoencoder):
    """Loss: mean residual (x − x̂)² + ``kl_weight`` · KL; map: the residual weighted by the
    smoothed, per-slice min-max normalised |∂KL/∂x|."""

    def __init__(self, *args, kl_weight: float = 0.05, **kwargs) -> None:
        super().__init__(*args, variational=True, **kwargs)
        self.kl_weight = kl_weight

    @staticmethod
    def kl(mu: Tensor, logvar: Tensor) -> Tensor:
        """(N,) KL divergence of N(mu, exp(logvar)) from N(0, 1), mean over latent units."""
        return -0.5 * torch.mean(1 + logvar - mu**2 - logvar.exp(), dim=1)

    def residual(self, features: Tensor, reconstruction: Tensor) -> Tensor:
        return (features - reconstruction) ** 2

    def loss(self, features: Tensor, weight: Tensor | None = None) -> Tensor:
        reconstruction, mu, logvar = self.reconstruct_with_latent(features)
        error = weighted_mean(self.residual(features, reconstruction), weight)
        return error + self.kl_weight * self.kl(mu, logvar).mean()

    def anomaly_map(self, features: Tensor) -> Tensor:
        with torch.enable_grad():
            x = features.detach().clone().requires_grad_(True)
            reconstruction, mu, logvar = self.reconstruct_with_latent(x)
            (gradient,) = torch.autograd.grad(self.kl(mu, logvar).sum(), x)
        gradient = gradient.abs()
        low = gradient.amin(dim=(1, 2, 3), keepdim=True)
        high = gradient.amax(dim=(1, 2, 3), keepdim=True)
        weight = _smooth((gradient - low) / (high - low).clamp_min(1e-12))
        return (self.residual(x, reconstruction) * weight).detach()


def _smooth(x: Tensor, size: int = 7, sigma: float = 3.0) -> Tensor:
    """Gaussian blur of (N, 1, H, W), zero-padded (the reference's kernel 7, σ 3)."""
    rows = blur_matrix(x.shape[2], size, sigma).to(x)
    cols = blur_matrix(x.shape[3], size, sigma).to(x).T
    return rows @ x @ cols
