"""Post-processing of anomaly maps per volume (not in the paper).

- ``volume_center``: each scan's map minus a low quantile of its own values inside the brain,
  so that a scan that is unusual throughout (another contrast, pose or scanner) does not use up
  the false-positive budget of every other scan; what is left is what stands out *within* the
  scan. Needs no labels: it is a fixed function of the scan's own map.
- a per-pixel ``weight`` (FAE's ``dark_weight``): the centred map times a weight that the
  method computes from the slice, so that what stands out within the scan counts more where
  the tissue has the intensity lesions have (read off the slice smoothed inside the brain by
  :func:`smooth_inside` where FAE's ``dark_smooth`` says so).
- ``slice_median`` (as in the field's evaluation code): a median over each slice and its
  neighbours in the volume, which removes responses that appear in one slice only while a
  lesion spans several.

:func:`finish_maps` applies them in that order wherever maps are made (the run's ``predict``,
the exported model's).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def finish_maps(
    maps: np.ndarray,
    masks: np.ndarray,
    volume_center: float = 0.0,
    slice_median: int = 1,
    volume: np.ndarray | None = None,
    slice_index: np.ndarray | None = None,
    weight: np.ndarray | None = None,
) -> np.ndarray:
    """(N, S, S) maps → centred per volume (``volume_center`` > 0), times ``weight`` ((N, S, S),
    where given), then median-filtered across slices (``slice_median`` > 1); 0 outside
    ``masks``. ``volume``/``slice_index``: as in :func:`median_across_slices` (default: one
    volume, slices in order). The weight comes after the centring: it then scales what stands
    out within the scan rather than the scan's own level (weighted first, a scan's darker
    healthy tissue would stand out too)."""
    if volume_center:
        maps = center_volumes(maps, masks, volume_center, volume)
    if weight is not None:
        maps = np.where(masks, maps * weight, 0.0).astype(np.float32)
    return median_across_slices(maps, masks, slice_median, volume, slice_index)


def smooth_inside(values: np.ndarray, masks: np.ndarray, sigma: float) -> np.ndarray:
    """(N, S, S) ``values`` smoothed in-plane by a Gaussian of ``sigma`` pixels over the brain
    only (a normalised convolution: pixels outside ``masks`` neither count nor pull the brain's
    edge towards them); 0 outside the brain. ``sigma`` 0 returns the values as they are."""
    values = np.asarray(values, np.float32)
    if not sigma:
        return values
    sigmas = (0, sigma, sigma)  # never across slices
    total = ndimage.gaussian_filter(np.where(masks, values, 0).astype(np.float32), sigmas)
    share = ndimage.gaussian_filter(masks.astype(np.float32), sigmas)
    return np.where(masks, total / np.maximum(share, 1e-6), 0).astype(np.float32)


def center_volumes(
    maps: np.ndarray, masks: np.ndarray, quantile: float, volume: np.ndarray | None = None
) -> np.ndarray:
    """(N, S, S) maps → each volume's maps minus the ``quantile`` (0..1) of that volume's map
    values inside ``masks``; 0 outside ``masks``. A volume without brain pixels is unchanged.
    ``volume``: (N,) which volume each slice belongs to (default: all one volume)."""
    volume = np.zeros(len(maps), np.int64) if volume is None else np.asarray(volume)
    out = np.array(maps, np.float32, copy=True)
    for v in np.unique(volume):
        rows = volume == v
        values = out[rows][masks[rows]]
        if values.size:
            out[rows] -= np.float32(np.quantile(values, quantile))
    return np.where(masks, out, 0.0).astype(np.float32)


def median_across_slices(
    maps: np.ndarray,
    masks: np.ndarray,
    size: int,
    volume: np.ndarray | None = None,
    slice_index: np.ndarray | None = None,
) -> np.ndarray:
    """(N, S, S) maps → each pixel's median over ``size`` neighbouring slices; 0 outside ``masks``.

    volume: (N,) which volume each slice belongs to; slice_index: (N,) its axial index there
    (default: one volume, slices in order). Only slices whose indices follow each other are
    neighbours: at a gap (a slice left out) or the end of a volume the nearest slice present
    stands in (scipy's ``"nearest"`` mode). ``size`` 1 returns ``maps`` unchanged.
    """
    if size == 1:
        return maps
    n = len(maps)
    volume = np.zeros(n, np.int64) if volume is None else np.asarray(volume)
    slice_index = np.arange(n) if slice_index is None else np.asarray(slice_index)
    out = np.array(maps, np.float32, copy=True)
    for v in np.unique(volume):
        rows = np.flatnonzero(volume == v)
        rows = rows[np.argsort(slice_index[rows], kind="stable")]
        breaks = np.flatnonzero(np.diff(slice_index[rows]) != 1) + 1
        for run in np.split(rows, breaks):
            out[run] = ndimage.median_filter(maps[run], size=(size, 1, 1), mode="nearest")
    return np.where(masks, out, 0.0).astype(np.float32)
