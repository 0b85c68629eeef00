"""The maps of the methods without training: random, the image itself, |x − μ| / σ."""

from __future__ import annotations

import torch
from torch import Tensor

from fae.nn.module import MapModule


class RandomModule(MapModule):
    """Uniform random maps, seeded per slice content (so maps do not depend on batching)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed

    def anomaly_map(self, features: Tensor) -> Tensor:
        out = torch.empty_like(features)
        for i, image in enumerate(features):
            key = int(torch.round(image.double().sum() * 1e4).item()) % (2**31)
            generator = torch.Generator().manual_seed(self.seed * 7919 + key)
            out[i] = torch.rand(image.shape, generator=generator).to(features.device)
        return out


class IdentityModule(MapModule):
    """The slice itself as its map."""

    def anomaly_map(self, features: Tensor) -> Tensor:
        return features


class MeanStdModule(MapModule):
    """|x − μ| / σ with per-pixel statistics of the healthy training slices."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(0))
        self.register_buffer("std", torch.ones(0))

    def fit(self, images: Tensor) -> None:
        """μ and σ (ddof=1, plus 1e-7 as in the reference) of (N, 1, S, S) slices."""
        x = images.double()
        self.mean = x.mean(dim=0, keepdim=True).float()
        self.std = (x.std(dim=0, keepdim=True) + 1e-7).float()

    def anomaly_map(self, features: Tensor) -> Tensor:
        return (features - self.mean).abs() / self.std

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # the statistics' shape is the slice size, known only once fitted
        for name in ("mean", "std"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
