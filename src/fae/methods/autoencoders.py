"""Autoencoders in image space: ``ae-mse``, ``ae-ssim`` and ``vae``, the residual as the map.

Architecture and settings as in the FAE paper's comparison code (Meissen et al. 2022,
github.com/FeliMe/feature-autoencoder, ``fae/baselines/ae`` and ``fae/baselines/vae``), which
follows Baur et al., "Autoencoders for unsupervised anomaly segmentation in brain MR images: a
comparative study" (MedIA 2021): five 3×3 stride-2 convolutions with widths 16-32-64-128-256
(InstanceNorm, LeakyReLU; the VAE without normalisation) down to S/32, a dense bottleneck of
256, five mirrored 4×4 stride-2 transposed convolutions; Adam lr 2e-4, batch 64, 10,000 steps.

- ``ae-mse``: loss and map are the squared error (x − x̂)².
- ``ae-ssim``: loss 1 − mean SSIM, map 1 − SSIM (11×11 Gaussian window, σ = 1.5).
- ``vae``: loss mean (x − x̂)² + 0.05 · KL (the reference calls the weight "very sensitive");
  map (x − x̂)² weighted by the smoothed, normalised gradient of the KL term with respect to
  the input (Zimmerer et al.'s combination, as in the reference code). Deviation: the gradient
  is min-max normalised per slice, not per batch, so a map never depends on its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fae.config import TrainingConfig
from fae.errors import FaeInputError
from fae.methods.base import AnomalyMethod
from fae.nn.module import MapModule
from fae.nn.ssim import blur_matrix, ssim_map


@dataclass
class AEConfig(TrainingConfig):
    """Image-space autoencoder settings (reference: FeliMe/feature-autoencoder baselines)."""

    hidden: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])
    latent: int = 256
    batch_size: int = 64
    ssim_window: int = 11
    ssim_sigma: float = 1.5

    def problems(self) -> dict[str, bool]:
        return {
            **super().problems(),
            "latent must be at least 1": self.latent < 1,
            "hidden needs at least one width": not self.hidden,
        }


@dataclass
class VAEConfig(AEConfig):
    kl_weight: float = 0.05


class ImageAutoencoder(MapModule):
    """(N, 1, S, S) → (N, 1, S, S); S must be divisible by 2^len(hidden).

    ``variational``: the bottleneck gives a mean and log-variance (reparameterised while
    training, the mean at test time) and the network has no normalisation layers.
    """

    def __init__(
        self,
        size: int,
        hidden: Sequence[int],
        latent: int,
        variational: bool = False,
    ) -> None:
        super().__init__()
        depth = len(hidden)
        if size % 2**depth:
            raise FaeInputError(None, f"slice size {size} is not divisible by 2^{depth}")
        self.variational = variational
        self.bottom = (hidden[-1], size // 2**depth, size // 2**depth)
        flat = hidden[-1] * self.bottom[1] * self.bottom[2]

        def block(conv: nn.Module, channels: int) -> list[nn.Module]:
            norm = [] if variational else [nn.InstanceNorm2d(channels)]
            return [conv, *norm, nn.LeakyReLU()]

        widths = [1, *hidden]
        encoder: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            encoder += block(nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), b)
        self.encoder = nn.Sequential(*encoder)
        self.to_latent = nn.Linear(flat, 2 * latent if variational else latent)
        self.from_latent = nn.Linear(latent, flat)
        decoder: list[nn.Module] = []
        for a, b in zip(widths[:1:-1], widths[-2:0:-1], strict=True):
            decoder += block(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1, bias=False), b)
        decoder.append(nn.ConvTranspose2d(widths[1], 1, 4, stride=2, padding=1, bias=False))
        self.decoder = nn.Sequential(*decoder)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(N, 1, S, S) → latent mean (N, L) and, when variational, log-variance (N, L)."""
        z = self.to_latent(self.encoder(x).flatten(1))
        if not self.variational:
            return z, None
        mu, logvar = z.chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(self.from_latent(z).view(-1, *self.bottom))

    def reconstruct(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(reconstruction, latent mean, log-variance); samples the latent while training."""
        mu, logvar = self.encode(x)
        z = mu
        if logvar is not None and self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


class _AEMSEModule(ImageAutoencoder):
    def loss(self, x: Tensor) -> Tensor:
        return F.mse_loss(self.reconstruct(x)[0], x)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.reconstruct(x)[0]) ** 2


class _AESSIMModule(ImageAutoencoder):
    def __init__(self, *args, window: int = 11, sigma: float = 1.5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.window, self.sigma = window, sigma

    def loss(self, x: Tensor) -> Tensor:
        return 1 - ssim_map(self.reconstruct(x)[0], x, self.window, self.sigma).mean()

    def forward(self, x: Tensor) -> Tensor:
        return 1 - ssim_map(self.reconstruct(x)[0], x, self.window, self.sigma)


class _VAEModule(ImageAutoencoder):
    def __init__(self, *args, kl_weight: float = 0.05, **kwargs) -> None:
        super().__init__(*args, variational=True, **kwargs)
        self.kl_weight = kl_weight

    @staticmethod
    def kl(mu: Tensor, logvar: Tensor) -> Tensor:
        """(N,) KL divergence of N(mu, exp(logvar)) from N(0, 1), mean over latent units."""
        return -0.5 * torch.mean(1 + logvar - mu**2 - logvar.exp(), dim=1)

    def loss(self, x: Tensor) -> Tensor:
        reconstruction, mu, logvar = self.reconstruct(x)
        return F.mse_loss(reconstruction, x) + self.kl_weight * self.kl(mu, logvar).mean()

    def forward(self, x: Tensor) -> Tensor:
        with torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)
            reconstruction, mu, logvar = self.reconstruct(x)
            (gradient,) = torch.autograd.grad(self.kl(mu, logvar).sum(), x)
        gradient = gradient.abs()
        low = gradient.amin(dim=(1, 2, 3), keepdim=True)
        high = gradient.amax(dim=(1, 2, 3), keepdim=True)
        weight = _smooth((gradient - low) / (high - low).clamp_min(1e-12))
        return ((x - reconstruction) ** 2 * weight).detach()


def _smooth(x: Tensor, size: int = 7, sigma: float = 3.0) -> Tensor:
    """Gaussian blur of (N, 1, H, W), zero-padded (the reference's kernel 7, σ 3)."""
    rows = blur_matrix(x.shape[2], size, sigma).to(x)
    cols = blur_matrix(x.shape[3], size, sigma).to(x).T
    return rows @ x @ cols


class AEMSE(AnomalyMethod):
    """Convolutional autoencoder in image space, squared-error residual (see module docs)."""

    name = "ae-mse"
    config_class = AEConfig

    def build(self, load_weights: bool = True) -> MapModule:
        return _AEMSEModule(self.prep.size, self.config.hidden, self.config.latent)


class AESSIM(AnomalyMethod):
    """Convolutional autoencoder in image space, SSIM loss and residual (see module docs)."""

    name = "ae-ssim"
    config_class = AEConfig

    def build(self, load_weights: bool = True) -> MapModule:
        c = self.config
        return _AESSIMModule(
            self.prep.size, c.hidden, c.latent, window=c.ssim_window, sigma=c.ssim_sigma
        )


class VAE(AnomalyMethod):
    """Variational autoencoder in image space (Baur et al. style; see module docs)."""

    name = "vae"
    config_class = VAEConfig

    def build(self, load_weights: bool = True) -> MapModule:
        c = self.config
        return _VAEModule(self.prep.size, c.hidden, c.latent, kl_weight=c.kl_weight)
