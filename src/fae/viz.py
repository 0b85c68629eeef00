"""Pictures for people: montages of axial slices with optional mask contours."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from fae.io import atomic_path

_PANEL_INCHES = 2.0
MAP_COLOURS = "autumn"  # anomaly maps, from the calibrated threshold (red) up (yellow)


def save_montage(
    volumes: Sequence[np.ndarray],
    path: str | Path,
    titles: Sequence[str] | None = None,
    n_slices: int = 6,
    overlays: Sequence[np.ndarray | None] | None = None,
    slices: Sequence[int] | Sequence[Sequence[int]] | None = None,
) -> Path:
    """Write a PNG grid: one row per 3D volume, ``n_slices`` axial slices (axis 2) per row.

    Slices are evenly spaced over the part of each volume with non-zero content, unless
    ``slices`` gives the indices for every row (a list of ints) or for each row (a list of
    lists). Arrays are taken as RAS-oriented and shown with anterior up. Each row has one grey
    scale; ``overlays`` (binary masks, or None per row) are drawn as red contours. Uses a figure
    without pyplot, so it is safe in any backend setting.
    """
    if not volumes:
        raise ValueError("save_montage needs at least one volume")
    if any(np.ndim(volume) != 3 for volume in volumes):
        raise ValueError("save_montage expects 3D volumes")
    overlays = list(overlays) if overlays is not None else [None] * len(volumes)
    titles = list(titles) if titles is not None else [""] * len(volumes)
    if len(overlays) != len(volumes) or len(titles) != len(volumes):
        raise ValueError("titles and overlays need one entry per volume")
    if slices is not None and not isinstance(slices[0], int | np.integer):
        per_row = [list(s) for s in slices]
    else:
        per_row = [list(slices) if slices is not None else None] * len(volumes)
    if len(per_row) != len(volumes):
        raise ValueError("slices needs one list of indices per volume")
    n_columns = len(per_row[0]) if per_row[0] is not None else n_slices
    height, width = np.rot90(np.asarray(volumes[0])[:, :, 0]).shape
    figure = Figure(
        figsize=(n_columns * _PANEL_INCHES * width / height, len(volumes) * _PANEL_INCHES),
        facecolor="black",
    )
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(volumes), n_columns, squeeze=False)
    for row, (volume, overlay, title) in enumerate(zip(volumes, overlays, titles, strict=True)):
        volume = np.asarray(volume)
        indices = per_row[row] if per_row[row] is not None else _content_slices(volume, n_slices)
        low, high = grey_range(volume)
        for column, index in enumerate(indices):
            ax = axes[row, column]
            ax.imshow(np.rot90(volume[:, :, index]), cmap="gray", vmin=low, vmax=high)
            if overlay is not None and np.any(overlay[:, :, index]):
                mask = np.rot90(np.asarray(overlay)[:, :, index] > 0).astype(np.float32)
                ax.contour(mask, levels=[0.5], colors="red", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(2, 2, f"z={index}", color="yellow", fontsize=7, va="top", ha="left")
        axes[row, 0].set_ylabel(title, color="white", fontsize=9)
    figure.subplots_adjust(left=0.03, right=0.99, bottom=0.01, top=0.99, wspace=0.02, hspace=0.02)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, facecolor=figure.get_facecolor())
    return Path(path)


def _content_slices(volume: np.ndarray, n_slices: int) -> list[int]:
    """Evenly spaced axial indices inside the range of slices that have non-zero voxels."""
    filled = np.flatnonzero(np.any(volume != 0, axis=(0, 1)))
    first, last = (filled[0], filled[-1]) if filled.size else (0, volume.shape[2] - 1)
    # Leave out the two ends, where only a sliver of content remains.
    positions = np.linspace(first, last, n_slices + 2)[1:-1]
    return [int(round(p)) for p in positions]


def grey_range(volume: np.ndarray) -> tuple[float, float]:
    """A robust grey scale for a whole volume: 0.5 to 99.5 percentile of its non-zero voxels."""
    values = volume[volume != 0]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, [0.5, 99.5])
    low = min(float(low), 0.0)
    return low, max(float(high), low + 1e-6)


def save_slice_figure(
    images: np.ndarray,
    segs: np.ndarray,
    maps: np.ndarray,
    path: str | Path,
    vmin: float,
    vmax: float,
    labels: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """Write a PNG with one row per slice: the image, the image with the ground truth in red,
    and the anomaly map over the image where it reaches ``vmin``, on ONE colour scale
    ``vmin..vmax`` for all rows (the run's calibrated scale), with a colour bar.

    ``images``, ``segs``, ``maps``: (n, H, W) prepared slices (RAS in-plane, shown anterior up).
    """
    n = len(images)
    if n == 0 or not (len(segs) == len(maps) == n):
        raise ValueError("save_slice_figure needs the same, non-zero number of images, segs, maps")
    labels = list(labels) if labels is not None else [""] * n
    vmax = max(vmax, vmin + 1e-6)
    figure = Figure(figsize=(3 * _PANEL_INCHES + 0.8, n * _PANEL_INCHES + 0.4), facecolor="black")
    FigureCanvasAgg(figure)
    axes = figure.subplots(n, 3, squeeze=False)
    for row in range(n):
        image, seg, amap = (np.rot90(a[row]) for a in (images, segs, maps))
        axes[row, 0].imshow(image, cmap="gray", vmin=0, vmax=1)
        axes[row, 1].imshow(image, cmap="gray", vmin=0, vmax=1)
        if seg.any():
            axes[row, 1].contour(seg.astype(np.float32), levels=[0.5], colors="red", linewidths=0.8)
        axes[row, 2].imshow(overlay_rgb(image, amap, vmin, vmax), interpolation="nearest")
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(labels[row], color="white", fontsize=6)
    for ax, name in zip(axes[0], ("image", "ground truth", "anomaly map"), strict=True):
        ax.set_title(name, color="white", fontsize=9)
    figure.subplots_adjust(left=0.06, right=0.86, bottom=0.01, top=0.95, wspace=0.03, hspace=0.05)
    if title:
        figure.suptitle(title, color="white", fontsize=10)
    bar = figure.colorbar(
        ScalarMappable(Normalize(vmin, vmax), colormaps[MAP_COLOURS]),
        cax=figure.add_axes((0.88, 0.1, 0.025, 0.8)),
    )
    bar.set_label("anomaly score (from the healthy threshold)", color="white", fontsize=7)
    bar.ax.tick_params(colors="white", labelsize=7)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, facecolor=figure.get_facecolor())
    return Path(path)


def map_colours(amap: np.ndarray, vmin: float, vmax: float) -> tuple[np.ndarray, np.ndarray]:
    """The colours of an anomaly map on the scale ``vmin..vmax`` (H, W, 3 in [0, 1]) and where
    it is shown at all (H, W bool: the map reaches ``vmin``, the calibrated threshold)."""
    colour = colormaps[MAP_COLOURS](Normalize(vmin, max(vmax, vmin + 1e-6))(amap))[..., :3]
    return colour.astype(np.float32), amap >= vmin


def overlay_rgb(image: np.ndarray, amap: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """A grey image in [0, 1] with the map blended in where it reaches ``vmin`` (H, W, 3)."""
    gray = np.clip(image, 0, 1)[..., None].repeat(3, axis=2).astype(np.float32)
    colour, shown = map_colours(amap, vmin, vmax)
    return np.where(shown[..., None], 0.4 * gray + 0.6 * colour, gray)


def save_overlay(
    images: np.ndarray,
    maps: np.ndarray,
    path: str | Path,
    vmin: float,
    vmax: float,
    labels: Sequence[str] | None = None,
    title: str = "",
    columns: int = 6,
) -> Path:
    """Write a PNG montage of slices with the anomaly map overlaid where it reaches ``vmin``.

    ``images`` (n, H, W) in [0, 1] and ``maps`` (n, H, W), RAS in-plane (shown anterior up).
    The colour scale ``vmin..vmax`` is fixed by the caller (the same for every scan of a run),
    never stretched per image; a colour bar shows it.
    """
    n = len(images)
    if n == 0 or len(maps) != n:
        raise ValueError("save_overlay needs the same, non-zero number of images and maps")
    labels = list(labels) if labels is not None else [""] * n
    vmax = max(vmax, vmin + 1e-6)
    # One montage image in one axes (24 axes of their own took 0.9 s of a 2-s prediction).
    height, width = images.shape[1:][::-1]  # rotated 90°
    rows = -(-n // columns)
    montage = np.zeros((rows * height, columns * width, 3), np.float32)
    for k in range(n):
        r, c = divmod(k, columns)
        cell = overlay_rgb(np.rot90(images[k]), np.rot90(maps[k]), vmin, vmax)
        montage[r * height : (r + 1) * height, c * width : (c + 1) * width] = cell
    figure = Figure(
        figsize=(columns * _PANEL_INCHES + 0.9, rows * _PANEL_INCHES + 0.4), facecolor="black"
    )
    FigureCanvasAgg(figure)
    right = 1 - 0.9 / (columns * _PANEL_INCHES + 0.9)
    ax = figure.add_axes((0.01, 0.01, right - 0.01, 0.93))
    ax.imshow(montage, interpolation="nearest")
    ax.set_axis_off()
    for k, label in enumerate(labels):
        r, c = divmod(k, columns)
        ax.text(c * width + 2, r * height + 2, label, color="yellow", fontsize=7, va="top")
    if title:
        figure.suptitle(title, color="white", fontsize=10)
    bar = figure.colorbar(
        ScalarMappable(Normalize(vmin, vmax), colormaps[MAP_COLOURS]),
        cax=figure.add_axes((right + 0.01, 0.1, 0.015, 0.8)),
    )
    bar.set_label("anomaly score", color="white", fontsize=8)
    bar.ax.tick_params(colors="white", labelsize=7)
    with atomic_path(path) as tmp:
        # zlib level 1: a third of the encoding time, a slightly larger file
        figure.savefig(
            tmp,
            format="png",
            dpi=100,
            facecolor=figure.get_facecolor(),
            pil_kwargs={"compress_level": 1},
        )
    return Path(path)
