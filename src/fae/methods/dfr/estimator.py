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

from dataclasses import replace

import numpy as np
import torch

from fae.errors import FaeInputError
from fae.methods.base import AnomalyMethod, as_slice_tensor
from fae.methods.dfr.config import DFRConfig
from fae.methods.dfr.torch_model import DFRModule, latent_channels
from fae.nn.backbones import FeatureExtractor
from fae.nn.module import MapModule


class DFR(AnomalyMethod):
    """Deep feature reconstruction (Shi et al. 2021) on the FAE's extractor; see module docs."""

    name = "dfr"
    config_class = DFRConfig

    def configure_from_data(self, train_slices) -> None:
        """Choose the bottleneck from the training features, unless ``latent`` was given."""
        if self.config.latent is None or getattr(self, "latent_from_data_", False):
            self.config = replace(self.config, latent=self.choose_latent(train_slices))
            self.latent_from_data_ = True

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
        return DFRModule(self._extractor(load_weights), self.config.latent)

    def _extractor(self, load_weights: bool) -> FeatureExtractor:
        c = self.config
        return FeatureExtractor(c.backbone, c.layers, c.weights if load_weights else None, False)
