"""Operating points for new scans, calibrated on healthy data.

A run turns anomaly maps into decisions with thresholds chosen on held-out *healthy* slices: the
pixel threshold at a false-positive rate ``f`` is the lowest map value that at most ``f`` of the
healthy brain pixels reach (``map >= t`` is suspicious), and likewise for slice scores. The same
healthy scans give the raw intensity range that prediction compares new scans against.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from fae.errors import FaeInputError
from fae.metrics import threshold_at_fpr

PIXEL_FPRS = (0.001, 0.01, 0.05)
SLICE_FPRS = PIXEL_FPRS
# a new scan whose raw 99th percentile is this many times outside the training range is flagged
INTENSITY_FACTOR = 3.0


def fpr_key(fpr: float) -> str:
    """The dictionary key of a false-positive rate: ``0.05`` → ``"0.05"``."""
    return f"{fpr:g}"


def thresholds_at(calibration: dict | None, fpr: float = 0.05) -> tuple[float, float]:
    """The calibrated (pixel, slice) thresholds at false-positive rate ``fpr``."""
    if not calibration:
        raise FaeInputError(
            None, "the run has no calibrated thresholds: run `fae calibrate --run RUN --data DIR`"
        )
    key = fpr_key(fpr)
    if key not in calibration["pixel"] or key not in calibration["slice"]:
        have = ", ".join(sorted(calibration["pixel"], key=float))
        raise FaeInputError(None, f"--fpr {fpr:g} is not calibrated; this run has {have}")
    return float(calibration["pixel"][key]), float(calibration["slice"][key])


def display_range(calibration: dict | None, fpr: float = 0.05) -> tuple[float, float]:
    """A run's colour scale for every map picture: from the calibrated pixel threshold at
    ``fpr`` (lower values are drawn as healthy) up to the highest healthy map value (or 1.5 ×
    the threshold where that is barely above it), the same for every scan."""
    low, _ = thresholds_at(calibration, fpr)
    healthy_max = float(calibration.get("max", 0.0))
    return low, healthy_max if healthy_max > low * 1.05 else low * 1.5


def calibrate_thresholds(
    maps: np.ndarray,
    masks: np.ndarray,
    slice_scores: np.ndarray,
    source: str,
    pixel_fprs: Sequence[float] = PIXEL_FPRS,
    slice_fprs: Sequence[float] = SLICE_FPRS,
) -> dict:
    """Thresholds at each false-positive rate from the maps of healthy slices.

    maps, masks: (N, S, S) anomaly maps and brain masks; slice_scores: (N,) slice scores.
    Returns ``{"pixel": {fpr: t}, "slice": {fpr: t}, "max", "n_slices", "n_pixels", "source"}``
    (``max``: the highest healthy map value, the top of the overlays' colour scale).
    """
    values = maps[masks]
    if values.size == 0:
        raise FaeInputError(source, "no brain pixels among the healthy slices to calibrate on")
    scores = slice_scores[masks.any(axis=(1, 2))]

    def at(x: np.ndarray, fpr: float) -> float:
        return threshold_at_fpr(x, np.zeros(x.shape, bool), fpr)

    return {
        "source": source,
        "n_slices": int(len(scores)),
        "n_pixels": int(values.size),
        "pixel": {fpr_key(f): at(values, f) for f in pixel_fprs},
        "slice": {fpr_key(f): at(scores, f) for f in slice_fprs},
        "max": float(values.max()),
    }


def intensity_reference(stats: Iterable[tuple[float, float]] | np.ndarray | None) -> dict:
    """The range of the training scans' raw (p1, p99) intensities inside the brain
    (:attr:`~fae.data.preprocess.PreparedVolume.intensity`)."""
    stats = np.asarray(list(stats if stats is not None else []), np.float64).reshape(-1, 2)
    stats = stats[np.isfinite(stats).all(axis=1)]  # scans without brain voxels say nothing
    if len(stats) == 0:
        return {}
    return {
        "n_scans": len(stats),
        "p1": [float(stats[:, 0].min()), float(stats[:, 0].max())],
        "p99": [float(stats[:, 1].min()), float(stats[:, 1].max())],
    }


def intensity_warning(stats: tuple[float, float], reference: dict) -> str | None:
    """Why a scan's intensities look unlike the training scans', or ``None``.

    Flags a 99th percentile more than :data:`INTENSITY_FACTOR` times above or below the
    training range, and negative values (e.g. z-scored data) where training had none.
    """
    if not reference:
        return None
    low, high = stats
    ref_low, ref_high = reference["p99"]
    if high > INTENSITY_FACTOR * ref_high or high * INTENSITY_FACTOR < ref_low:
        return (
            f"intensity range differs from training (99th percentile {high:.4g}, "
            f"training {ref_low:.4g} to {ref_high:.4g})"
        )
    if low < 0 <= reference["p1"][0]:
        return f"negative intensities (1st percentile {low:.4g}) where training had none"
    return None
