"""Autoencoders in image space: ``ae-mse`` and ``ae-ssim``, the residual as the map.

Architecture and settings as in the FAE paper's comparison code (Meissen et al. 2022,
github.com/FeliMe/feature-autoencoder, ``fae/baselines/ae`` and ``fae/baselines/vae``), which
follows Baur et al., "Autoencoders for unsupervised anomaly segmentation in brain MR images: a
comparative study" (MedIA 2021): five 3×3 stride-2 convolutions with widths 16-32-64-128-256
(InstanceNorm, LeakyReLU; the VAE without normalisation) down to S/32, a dense bottleneck of
256, five mirrored 4×4 stride-2 transposed convolutions; Adam lr 2e-4, batch 64, 10,000 steps.

- ``ae-mse``: loss and map are the squared error (x − x̂)².
- ``ae-ssim``: loss 1 − mean SSIM, map 1 − SSIM (11×11 Gaussian window, σ = 1.5).

The variational version is :mod:`fae.methods.vae`.
"""

from __future__ import annotations

from fae.methods.ae.config import AEConfig
from fae.methods.ae.torch_model import MSEAutoencoder, SSIMAutoencoder
from fae.methods.base import AnomalyMethod
from fae.nn.module import MapModule


class AEMSE(AnomalyMethod):
    """Convolutional autoencoder in image space, squared-error residual (see module docs)."""

    name = "ae-mse"
    config_class = AEConfig

    def build(self, load_weights: bool = True) -> MapModule:
        return MSEAutoencoder(self.prep.size, self.config.hidden, self.config.latent)


class AESSIM(AnomalyMethod):
    """Convolutional autoencoder in image space, SSIM loss and residual (see module docs)."""

    name = "ae-ssim"
    config_class = AEConfig

    def build(self, load_weights: bool = True) -> MapModule:
        c = self.config
        return SSIMAutoencoder(
            self.prep.size, c.hidden, c.latent, window=c.ssim_window, sigma=c.ssim_sigma
        )
