"""The image-space convolutional autoencoder (Baur et al. 2021, as in the FAE paper's code) and
its two residuals: squared error (``ae-mse``) and 1 − SSIM (``ae-ssim``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fae.distributed import global_draw
from fae.errors import FaeInputError
from fae.nn.module import MapModule
from fae.nn.ssim import ssim_map


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

    def reconstruct_with_latent(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(reconstruction, latent mean, log-variance); samples the latent while training."""
        mu, logvar = self.encode(x)
        z = mu
        if logvar is not None and self.training:
            noise = global_draw(
                lambda s: torch.randn(s, dtype=mu.dtype, device=mu.device), mu.shape
            )
            z = mu + noise * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.reconstruct_with_latent(x)[0]


class MSEAutoencoder(ImageAutoencoder):
    """Residual (and loss) the squared error (x − x̂)²."""

    def residual(self, features: Tensor, reconstruction: Tensor) -> Tensor:
        return (features - reconstruction) ** 2


class SSIMAutoencoder(ImageAutoencoder):
    """Residual 1 − SSIM(x̂, x) per pixel; loss its mean."""

    def __init__(self, *args, window: int = 11, sigma: float = 1.5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.window, self.sigma = window, sigma

    def residual(self, features: Tensor, reconstruction: Tensor) -> Tensor:
        return 1 - ssim_map(reconstruction, features, self.window, self.sigma)
