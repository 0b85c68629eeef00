"""DFR: deep feature reconstruction with a 1×1-convolution autoencoder and squared error.

Shi et al., "Unsupervised anomaly segmentation via deep feature reconstruction",
Neurocomputing 2021; settings from the FAE paper's comparison code (FeliMe/feature-autoencoder,
``fae/baselines/DFR``): a 1×1-conv autoencoder C → (C + 2L)/2 → 2L → L → 2L → (C + 2L)/2 → C
with L = 128 latent channels, each convolution without bias and followed by BatchNorm and ReLU;
MSE loss; Adam lr 2e-4, batch 4, 10,000 steps. The map is the channel-mean squared error,
upsampled bilinearly to the slice.

Deviation, as the issue asks: the features come from the *same* frozen extractor as the FAE
(ResNet-18 layer0-2 or EfficientNet-Lite0 at /4, BatchNorm frozen) instead of the original's 12
VGG19 layers, so that the comparison isolates the reconstruction model and loss.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fae.config import TrainingConfig
from fae.methods.base import AnomalyMethod
from fae.nn.backbones import FeatureExtractor
from fae.nn.module import MapModule


@dataclass
class DFRConfig(TrainingConfig):
    backbone: str = "resnet18"
    layers: list[str] | None = None
    weights: str | None = "imagenet"
    latent: int = 128
    batch_size: int = 4

    def problems(self) -> dict[str, bool]:
        return {**super().problems(), "latent must be at least 1": self.latent < 1}


def _conv_block(a: int, b: int) -> list[nn.Module]:
    return [nn.Conv2d(a, b, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]


class _DFRModule(MapModule):
    def __init__(self, extractor: FeatureExtractor, latent: int) -> None:
        super().__init__()
        self.extractor = extractor
        c = extractor.out_channels
        widths = [c, (c + 2 * latent) // 2, 2 * latent, latent]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += _conv_block(a, b)
        for a, b in zip(widths[:0:-1], widths[-2::-1], strict=True):
            layers += _conv_block(a, b)
        self.autoencoder = nn.Sequential(*layers)

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

    def build(self, load_weights: bool = True) -> MapModule:
        c = self.config
        weights = c.weights if load_weights else None
        return _DFRModule(FeatureExtractor(c.backbone, c.layers, weights, False), c.latent)
