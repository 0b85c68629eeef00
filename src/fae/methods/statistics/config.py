"""Settings of the methods without training."""

from __future__ import annotations

from dataclasses import dataclass

from fae.config import TrainingConfig


@dataclass
class StatisticsConfig(TrainingConfig):
    """Settings of a method without training: only ``seed`` and ``slice_score`` matter."""

    steps: int = 1
