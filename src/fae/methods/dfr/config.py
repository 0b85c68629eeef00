"""DFR's hyper-parameters (the FAE paper's comparison code)."""

from __future__ import annotations

from dataclasses import dataclass

from fae.config import TrainingConfig


@dataclass
class DFRConfig(TrainingConfig):
    """``latent``: the bottleneck width; ``None`` chooses it from a PCA of the training
    features (the principal components of ``pca_slices`` slices that hold ``latent_variance``)."""

    backbone: str = "resnet18"
    layers: list[str] | None = None
    weights: str | None = "imagenet"
    latent: int | None = None
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
