"""Methods that learn no weights: random maps, intensity thresholding, per-pixel mean and std.

They run through the same pipeline as the networks (fit → calibrate → predict → evaluate), so
their numbers are directly comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fae.config import TrainingConfig
from fae.methods.base import AnomalyMethod
from fae.nn.module import MapModule


@dataclass
class StatisticsConfig(TrainingConfig):
    """Settings of a method without training: only ``seed`` and ``slice_score`` matter."""

    steps: int = 1


class _RandomModule(MapModule):
    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed

    def forward(self, x: Tensor) -> Tensor:
        # seeded per slice content, so maps do not depend on batching or call order
        out = torch.empty_like(x)
        for i, image in enumerate(x):
            key = int(torch.round(image.double().sum() * 1e4).item()) % (2**31)
            generator = torch.Generator().manual_seed(self.seed * 7919 + key)
            out[i] = torch.rand(image.shape, generator=generator).to(x.device)
        return out


class RandomMaps(AnomalyMethod):
    """Uniform random maps: the floor every method must clear (pixel AP = lesion prevalence)."""

    name = "random"
    config_class = StatisticsConfig
    learns = False

    def build(self, load_weights: bool = True) -> MapModule:
        return _RandomModule(self.config.seed)


class _IdentityModule(MapModule):
    def forward(self, x: Tensor) -> Tensor:
        return x


class Threshold(AnomalyMethod):
    """The pre-processed (histogram-equalised) image itself as the anomaly map.

    Meissen et al., "Challenging current semi-supervised anomaly segmentation methods for brain
    MRI", BrainLes 2021: on FLAIR, where tumours are hyperintense, this beats many deep models;
    it cannot see anomalies that are not brighter than their surroundings.
    """

    name = "threshold"
    config_class = StatisticsConfig
    learns = False

    def build(self, load_weights: bool = True) -> MapModule:
        return _IdentityModule()


class _MeanStdModule(MapModule):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(0))
        self.register_buffer("std", torch.ones(0))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean).abs() / self.std

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # the statistics' shape is the slice size, known only once fitted
        for name in ("mean", "std"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class BenchmarkMeanStd(AnomalyMethod):
    """Per-pixel mean μ and standard deviation σ of the healthy training slices; map |x−μ|/σ.

    The "benchmark model" of Baur et al. / Meissen et al. (arXiv 2011.12735), as in the FAE
    paper's code: σ with ddof=1, plus 1e-7. It assumes registered scans (each pixel position
    means the same anatomy), which the paper's data were and the LGG data are not.
    """

    name = "bm"
    config_class = StatisticsConfig
    learns = False

    def build(self, load_weights: bool = True) -> MapModule:
        return _MeanStdModule()

    def fit_statistics(self, images: Tensor) -> None:
        x = images.double()
        self.model_.mean = x.mean(dim=0, keepdim=True).float()
        self.model_.std = (x.std(dim=0, keepdim=True) + 1e-7).float()
