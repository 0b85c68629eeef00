"""Intensity thresholding: the pre-processed image itself is the anomaly map.

Meissen et al., "Challenging current semi-supervised anomaly segmentation methods for brain MRI"
(BrainLes 2021) showed that on FLAIR, where tumours are hyperintense, this beats many deep
models. It cannot see anomalies that are not brighter than their surroundings, which is what
the Feature Autoencoder exists for.
"""

from __future__ import annotations

import numpy as np


class ThresholdBaseline:
    """Anomaly map = histogram-equalised intensity inside the brain; nothing to learn."""

    def fit(self, images: np.ndarray, masks: np.ndarray | None = None) -> ThresholdBaseline:
        """No parameters: returns ``self`` for API symmetry with trainable methods."""
        return self

    def predict(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """(N, H, W) images in [0, 1] and brain masks → (N, H, W) float32 anomaly maps."""
        return np.where(masks, images, 0.0).astype(np.float32)
