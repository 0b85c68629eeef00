"""Methods without training: random maps, intensity thresholding, per-pixel mean and std."""

from fae.methods.statistics.config import StatisticsConfig
from fae.methods.statistics.estimator import BenchmarkMeanStd, RandomMaps, Threshold

__all__ = ["BenchmarkMeanStd", "RandomMaps", "StatisticsConfig", "Threshold"]
