"""The Structural Feature-Autoencoder as pure ``nn.Module``s: features → reconstruction → map.

:class:`FeatureAutoencoder` (Meissen et al. 2022): per hidden width, a 5×5 stride-2 convolution
(no bias), BatchNorm, LeakyReLU and Dropout2d; the decoder is the mirror image with 6×6 stride-2
transposed convolutions (the last one back to the feature channels, also with BatchNorm,
LeakyReLU and Dropout2d), then a 1×1 convolution. For 256×32×32 features and widths
100-150-200-300 the bottleneck is 300×2×2 and the model has about 8 M parameters.

:class:`StructuralFAE` puts it behind the frozen extractor of :mod:`fae.nn.backbones`; its
residual, 1 − SSIM per feature channel, is both the training loss (its mean) and the anomaly
map (its channel mean, upsampled to the slice).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from fae.methods.fae.fusion import TailSurprisal
from fae.nn.backbones import FeatureExtractor
from fae.nn.module import MapModule
from fae.nn.ssim import ssim_map

DEFAULT_HIDDEN = (100, 150, 200, 300)


def _block(conv: nn.Module, channels: int, dropout: float) -> nn.Sequential:
    layers = [conv, nn.BatchNorm2d(channels), nn.LeakyReLU()]
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


class FeatureAutoencoder(nn.Module):
    """(N, C, H, W) features → (N, C, H, W) reconstruction; H and W divisible by 2^len(hidden)."""

    def __init__(
        self, in_channels: int, hidden: Sequence[int] = DEFAULT_HIDDEN, dropout: float = 0.1
    ) -> None:
        super().__init__()
        widths = [in_channels, *hidden]
        self.encoder = nn.Sequential(
            *(
                _block(nn.Conv2d(a, b, 5, stride=2, padding=2, bias=False), b, dropout)
                for a, b in zip(widths[:-1], widths[1:], strict=True)
            )
        )
        self.decoder = nn.Sequential(
            *(
                _block(nn.ConvTranspose2d(b, a, 6, stride=2, padding=2, bias=False), a, dropout)
                for a, b in zip(widths[-2::-1], widths[:0:-1], strict=True)
            ),
            nn.Conv2d(in_channels, in_channels, 1, bias=False),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.decoder(self.encoder(features))


class StructuralFAE(MapModule):
    """Frozen CNN features of a slice, reconstructed by a convolutional autoencoder.

    Shapes for a 128×128 input with the default ResNet-18 layers:
    slice (N, 1, 128, 128) → features (N, 256, 32, 32) → reconstruction (N, 256, 32, 32)
    → residual 1 − SSIM (N, 256, 32, 32) → anomaly map (N, 1, 128, 128).

    ``standardize_features`` (not in the paper): z-score each feature channel with the training
    set's statistics (fitted by :meth:`fit_features`) before the autoencoder.
    ``dark_weight`` (not in the paper): keep a healthy intensity distribution for
    :meth:`darkness`, the weight that the estimator applies to each scan's centred map.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        layers: Sequence[str] | None = None,
        weights: str | Path | None = "imagenet",
        train_batchnorm: bool = False,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        dropout: float = 0.1,
        ssim_window: int = 5,
        ssim_sigma: float = 1.5,
        standardize_features: bool = False,
        fusion: str = "none",
        dark_weight: bool = False,
    ) -> None:
        super().__init__()
        self.extractor = FeatureExtractor(backbone, layers, weights, train_batchnorm)
        channels = self.extractor.out_channels
        self.autoencoder = FeatureAutoencoder(channels, hidden, dropout)
        self.ssim_window = ssim_window
        self.ssim_sigma = ssim_sigma
        self.standardize_features = standardize_features
        # Per-channel statistics of the training features (identity until fitted).
        self.register_buffer("feature_mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("feature_std", torch.ones(1, channels, 1, 1))
        self.fusion = fusion
        if fusion == "intensity":  # fitted on healthy slices by fit_healthy
            self.structure_tail = TailSurprisal()
            self.intensity_tail = TailSurprisal()
        if dark_weight:  # fitted on healthy slices by fit_healthy (on negated intensities)
            self.darkness_tail = TailSurprisal()

    @property
    def cache_features(self) -> bool:
        """Features are a fixed function of the slice (frozen BatchNorm): compute them once."""
        return not self.extractor.train_batchnorm

    @property
    def fits_features(self) -> bool:
        return self.standardize_features

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Only the autoencoder learns; the extractor stays frozen."""
        return self.autoencoder.parameters()

    def features(self, x: Tensor) -> Tensor:
        """(N, 1, H, W) slices in [0, 1] → (N, C, H/4, W/4) frozen features (standardised per
        channel with the training statistics when ``standardize_features``)."""
        with torch.no_grad():
            return self._standardize(self.extractor(x))

    def fit_features(self, features: Tensor) -> Tensor:
        """Set the per-channel mean and standard deviation from the raw training features."""
        if not self.standardize_features:
            return features
        f = features.double()
        self.feature_mean.copy_(f.mean(dim=(0, 2, 3), keepdim=True).float())
        self.feature_std.copy_(f.std(dim=(0, 2, 3), keepdim=True).float().clamp_min(1e-6))
        return self._standardize(features)

    def _standardize(self, features: Tensor) -> Tensor:
        if not self.standardize_features:
            return features
        return (features - self.feature_mean) / self.feature_std

    def reconstruct(self, features: Tensor) -> Tensor:
        return self.autoencoder(features)

    def residual(self, features: Tensor, reconstruction: Tensor) -> Tensor:
        """1 − SSIM per pixel and feature channel (the structural dissimilarity)."""
        return 1 - ssim_map(reconstruction, features, self.ssim_window, self.ssim_sigma)

    def structure(self, x: Tensor) -> Tensor:
        """(N, 1, H, W) slices → (N, 1, H, W) structural maps (the paper's anomaly map)."""
        return super().forward(x)

    def forward(self, x: Tensor) -> Tensor:
        """(N, 1, H, W) slices → (N, 1, H, W) maps: the structural map, or with ``fusion`` the
        intensity's healthy surprisal times the structure's healthy probability P(U < u) (both
        fitted on healthy slices first)."""
        structure = self.structure(x)
        if self.fusion == "none":
            return structure
        unusual = -torch.expm1(-self.structure_tail(structure.float()))  # 0.5 ... 1
        return self.intensity_tail(x.float()) * unusual

    def darkness(self, x: Tensor) -> Tensor:
        """(N, 1, H, W) slices → (N, 1, H, W) weights for ``dark_weight``: the probability that
        a healthy brain pixel is brighter, P_healthy(V > v), at least 0.5 (its value at the
        healthy median): 1 for tissue darker than any healthy tissue, 0.5 for the brighter half.
        """
        return -torch.expm1(-self.darkness_tail(-x.float()))


class MapsAndWeights(nn.Module):
    """A :class:`StructuralFAE` with ``dark_weight`` as one graph with two outputs, for export:
    (N, 1, H, W) slices → its (N, 1, H, W) maps and its (N, 1, H, W) darkness weights."""

    def __init__(self, model: StructuralFAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.model(x), self.model.darkness(x)
