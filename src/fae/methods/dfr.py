"""DFR: deep feature reconstruction with a 1×1-convolution autoencoder and squared error.

Shi et al., "Unsupervised anomaly segmentation via deep feature reconstruction",
Neurocomputing 2021; settings from the FAE paper's comparison code (FeliMe/feature-autoencoder,
``fae/baselines/DFR``, after YoungGod/DFR): a 1×1-conv autoencoder C → (C + 2L)/2 → 2L → L →
2L → (C + 2L)/2 → C, BatchNorm and ReLU after every convolution except the latent and the output
ones; L = the number of principal components that explain at most 90 % of the feature variance
of the first training slices (the reference's ``estimate_latent_channels``; set ``latent`` to
fix it); MSE loss; Adam lr 2e-4, batch 4, 10,000 steps. The map is the channel-mean squared
error, upsampled bilinearly to the slice.

A deliberate deviation: the features come from the *same* frozen extractor as the FAE
(ResNet-18 layer0-2 or EfficientNet-Lite0 at /4, BatchNorm frozen) instead of the original's 12
VGG19 layers, so that the comparison isolates the reconstruction model and loss.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fae.config import TrainingConfig
from fae.errors import FaeInputError
from fae.methods.base import AnomalyMethod, as_slice_tensor
from fae.nn.backbones import FeatureExtractor
from fae.nn.module import MapModule


@dataclass
class DFRConfig(TrainingConfig):
    backbone: str = "resnet18"
    layers: list[str] | None = None
    weights: str | None = "imagenet"
    latent: int | None = None  # None: from a PCA of the training features (see module docs)
    latent_variance: float = 0.9
    pca_slices: int = 24
    batch_size: int = 4

    def problems(self) -> dict[str, bool]:
        return {
            **super().problems(),
            "latent must be at least 1": self.latent is not None and self.latent < 1,
            "latent_variance must be in (0, 1]": not 0 < self.latent_variance <= 1,
            "pca_slices must be at least 1": self.pca_slices < 1,
        }


def _stack(widths: list[int]) -> list[nn.Module]:
    """1×1 convolutions through ``widths``; BatchNorm + ReLU after all but the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Conv2d(a, b, 1))
        if i < len(widths) - 2:
            layers += [nn.BatchNorm2d(b), nn.ReLU()]
    return layers


def latent_channels(features: Tensor, variance: float = 0.9) -> int:
    """How many principal components of (N, C, H, W) features explain at most ``variance`` of
    their total variance (at least 1): the reference's choice of DFR's bottleneck."""
    x = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]).double()
    eigen = torch.linalg.svdvals(x - x.mean(dim=0)) ** 2
    ratio = torch.cumsum(eigen / eigen.sum(), 0)
    return max(1, int((ratio <= variance).sum()))


class _DFRModule(MapModule):
    def __init__(self, extractor: FeatureExtractor, latent: int) -> None:
        super().__init__()
        self.extractor = extractor
        c = extractor.out_channels
        widths = [c, (c + 2 * latent) // 2, 2 * latent, latent]
        self.autoencoder = nn.Sequential(*_stack(widths), *_stack(widths[::-1]))

    def features(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.extractor(x)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return self.autoencoder.parameters()

    def loss(self, features: Tensor) -> Tensor:
        return F.mse_loss(self.autoencoder(features), features)

    def forward(self, x: Tensor) -> Tensor:
        f = self.features(x)
        small = ((self.autoencoder(f) - f) ** 2).mean(dim=1, keepdim=True)
        return F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=True)


class DFR(AnomalyMethod):
    """Deep feature reconstruction (Shi et al. 2021) on the FAE's extractor; see module docs."""

    name = "dfr"
    config_class = DFRConfig

    def fit(self, train_slices, val_slices=None, run_dir=None):
        """Choose the bottleneck from the training features (unless ``latent`` was given),
        then train as every method does."""
        if self.config.latent is None or getattr(self, "latent_from_data_", False):
            self.config = replace(self.config, latent=self.choose_latent(train_slices))
            self.latent_from_data_ = True
        return super().fit(train_slices, val_slices, run_dir)

    def choose_latent(self, train_slices) -> int:
        """The reference's bottleneck: principal components of the features of
        ``pca_slices`` evenly spaced training slices that hold ``latent_variance``."""
        images = as_slice_tensor(train_slices)
        pick = np.linspace(0, len(images) - 1, min(self.config.pca_slices, len(images)))
        torch.manual_seed(self.config.seed)  # the same extractor fit() builds, also unpretrained
        extractor = self._extractor(load_weights=True)
        with torch.no_grad():
            features = extractor(images[np.round(pick).astype(int)])
        return latent_channels(features, self.config.latent_variance)

    def preflight(self) -> None:
        self._extractor(load_weights=True)  # the latent size needs data; the weights do not

    def build(self, load_weights: bool = True) -> MapModule:
        if self.config.latent is None:
            raise FaeInputError(None, "DFR's latent size is set by fit (or give latent=N)")
        return _DFRModule(self._extractor(load_weights), self.config.latent)

    def _extractor(self, load_weights: bool) -> FeatureExtractor:
        c = self.config
        return FeatureExtractor(c.backbone, c.layers, c.weights if load_weights else None, False)
