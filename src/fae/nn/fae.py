"""The Structural Feature-Autoencoder as a pure ``nn.Module``: features → reconstruction → map.

Training loops, checkpoints and data live elsewhere (:mod:`fae.train`, :mod:`fae.model`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from fae.nn.autoencoder import DEFAULT_HIDDEN, FeatureAutoencoder
from fae.nn.backbones import FeatureExtractor
from fae.nn.module import MapModule
from fae.nn.ssim import ssim_map


class StructuralFAE(MapModule):
    """Frozen CNN features of a slice, reconstructed by a convolutional autoencoder.

    Shapes for a 128×128 input with the default ResNet-18 layers:
    slice (N, 1, 128, 128) → features (N, 256, 32, 32) → reconstruction (N, 256, 32, 32)
    → anomaly map (N, 1, 128, 128), where map = 1 − SSIM averaged over feature channels.
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

    @property
    def cache_features(self) -> bool:
        """Features are a fixed function of the slice (frozen BatchNorm): compute them once."""
        return not self.extractor.train_batchnorm

    def trainable_parameters(self):
        """Only the autoencoder learns; the extractor stays frozen."""
        return self.autoencoder.parameters()

    def features(self, x: Tensor) -> Tensor:
        """(N, 1, H, W) slices in [0, 1] → (N, C, H/4, W/4) frozen features (standardised per
        channel with the training statistics when ``standardize_features``)."""
        with torch.no_grad():
            return self.standardize(self.extractor(x))

    def standardize(self, features: Tensor) -> Tensor:
        if not self.standardize_features:
            return features
        return (features - self.feature_mean) / self.feature_std

    def fit_feature_stats(self, features: Tensor) -> None:
        """Set the per-channel mean and standard deviation from raw training features."""
        f = features.double()
        self.feature_mean.copy_(f.mean(dim=(0, 2, 3), keepdim=True).float())
        self.feature_std.copy_(f.std(dim=(0, 2, 3), keepdim=True).float().clamp_min(1e-6))

    def reconstruct(self, features: Tensor) -> Tensor:
        return self.autoencoder(features)

    def loss(self, features: Tensor) -> Tensor:
        """1 − mean SSIM between features and their reconstruction (the training objective)."""
        return 1 - self._ssim(self.reconstruct(features), features).mean()

    def feature_map(self, features: Tensor) -> Tensor:
        """(N, C, h, w) features → (N, 1, h, w) structural dissimilarity, mean over channels."""
        return 1 - self._ssim(self.reconstruct(features), features).mean(dim=1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        """(N, 1, H, W) slices → (N, 1, H, W) anomaly maps (bilinear, align_corners=True)."""
        small = self.feature_map(self.features(x))
        return F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=True)

    def _ssim(self, a: Tensor, b: Tensor) -> Tensor:
        return ssim_map(a, b, self.ssim_window, self.ssim_sigma)
