"""DFR's network: the shared frozen extractor and a 1×1-convolution autoencoder of its features.

Widths C → (C + 2L)/2 → 2L → L → 2L → (C + 2L)/2 → C, BatchNorm and ReLU after every
convolution except the latent and the output ones; the residual is the squared error per
feature channel (loss: its mean; map: its channel mean, upsampled to the slice).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from fae.nn.backbones import FeatureExtractor
from fae.nn.module import MapModule


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


class DFRModule(MapModule):
    """(N, 1, H, W) slices → frozen features (N, C, H/4, W/4) → 1×1-conv reconstruction."""

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

    def reconstruct(self, features: Tensor) -> Tensor:
        return self.autoencoder(features)

    def residual(self, features: Tensor, reconstruction: Tensor) -> Tensor:
        return (reconstruction - features) ** 2
