"""Methods that learn no weights: random maps, intensity thresholding, per-pixel mean and std.

They run through the same pipeline as the networks (fit → calibrate → predict → evaluate), so
their numbers are directly comparable.
"""

from __future__ import annotations

from torch import Tensor

from fae.methods.base import AnomalyMethod
from fae.methods.statistics.config import StatisticsConfig
from fae.methods.statistics.torch_model import IdentityModule, MeanStdModule, RandomModule
from fae.nn.module import MapModule


class RandomMaps(AnomalyMethod):
    """Uniform random maps: the floor every method must clear (pixel AP = lesion prevalence)."""

    name = "random"
    config_class = StatisticsConfig
    learns = False
    export_problem = "its maps are random numbers, not a network to export"

    def build(self, load_weights: bool = True) -> MapModule:
        return RandomModule(self.config.seed)


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
        return IdentityModule()


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
        return MeanStdModule()

    def fit_statistics(self, images: Tensor) -> None:
        self.model_.fit(images)
