"""Post-processing of anomaly maps across slices (not in the paper; as in the field's
evaluation code): a median over each slice and its neighbours in the volume, which removes
responses that appear in one slice only while a lesion spans several."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


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
