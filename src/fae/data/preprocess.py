"""Volume → 2D slices, as in the paper: axial slices, centre crop, resize, histogram equalisation.

:func:`prepare_volume` keeps everything needed to undo its geometry later (reorientation, slice
selection, crop), so that anomaly maps can be written back in each scan's own space.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Literal

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.exposure import equalize_hist
from skimage.filters import threshold_otsu

from fae.data.volume import Volume, check_same_grid
from fae.errors import FaeInputError

ZERO_BACKGROUND_FRACTION = 0.2  # more exact zeros than this: treated as skull-stripped
RAS_ORNT = np.array([[0, 1], [1, 1], [2, 1]])


@dataclass(frozen=True)
class PrepConfig:
    """How slices are prepared; part of every checkpoint so prediction repeats it exactly.

    size: output side length (the paper: 128).
    slices: ``"brain"`` keeps axial slices that contain brain; ``(start, stop)`` keeps that
        range of axial indices (after reorientation to RAS), intersected with the brain slices.
    min_brain_fraction: drop slices whose brain covers less than this fraction of the slice.
    square: ``"crop"`` centre-crops the in-plane axes to a square (the paper), ``"pad"`` pads.
    normalize: ``"equalize"`` histogram-equalises per volume inside the brain (the paper);
        ``"minmax"`` rescales the 0.5-99.5 percentile range inside the brain to [0, 1].
    seg_threshold: resized segmentations are binarised at ``> seg_threshold`` (the paper: 0.4).
    """

    size: int = 128
    slices: Literal["brain"] | tuple[int, int] = "brain"
    min_brain_fraction: float = 0.0
    square: Literal["crop", "pad"] = "crop"
    normalize: Literal["equalize", "minmax"] = "equalize"
    seg_threshold: float = 0.4

    def __post_init__(self) -> None:
        if self.size < 8:
            raise FaeInputError(None, f"slice size must be at least 8, got {self.size}")
        if self.square not in ("crop", "pad"):
            raise FaeInputError(None, f"square must be 'crop' or 'pad', got {self.square!r}")
        if self.normalize not in ("equalize", "minmax"):
            raise FaeInputError(
                None, f"normalize must be 'equalize' or 'minmax', got {self.normalize!r}"
            )
        if self.slices != "brain" and (len(self.slices) != 2 or self.slices[0] >= self.slices[1]):
            raise FaeInputError(
                None, f"slices must be 'brain' or (start, stop), got {self.slices!r}"
            )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["slices"] = self.slices if self.slices == "brain" else list(self.slices)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PrepConfig:
        d = dict(d)
        if d.get("slices", "brain") != "brain":
            d["slices"] = tuple(d["slices"])
        return cls(**d)

    def key(self) -> str:
        """A short hash of the settings, used to key the slice cache."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class PreparedVolume:
    """Prepared slices of one scan plus the geometry to map them back.

    images: (n, size, size) float32 in [0, 1], 0 outside the brain.
    segs, masks: (n, size, size) bool lesion and brain masks.
    slice_index: (n,) axial index of each slice in the RAS-reoriented volume.
    ornt: nibabel orientation that took the input array to RAS.
    shape: the input array's shape; crop: (x0, y0, side) of the square taken in-plane
    (negative offsets mean padding).
    """

    images: np.ndarray
    segs: np.ndarray
    masks: np.ndarray
    slice_index: np.ndarray
    ornt: np.ndarray
    shape: tuple[int, int, int]
    crop: tuple[int, int, int]


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient an array to the closest RAS axes; returns the array and the orientation used."""
    ornt = nib.orientations.io_orientation(affine)
    return nib.orientations.apply_orientation(data, ornt), ornt


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """Brain (or head) mask for data that comes without one, holes filled in each axial slice.

    Skull-stripped scans have an exactly-zero background: there the mask is the non-zero voxels
    (not ``> 0``, so z-scored or bias-corrected brains with negative values keep no holes).
    Scans with a noisy background (e.g. the skull-on LGG FLAIR, background 1-10 of 255) get
    Otsu's threshold instead, which separates the head from the air.
    """
    if np.mean(image == 0) > ZERO_BACKGROUND_FRACTION:
        mask = image != 0
    else:
        mask = image > threshold_otsu(image)
    for k in range(mask.shape[2]):
        mask[:, :, k] = ndimage.binary_fill_holes(mask[:, :, k])
    return mask


def prepare_volume(
    image: Volume,
    seg: Volume | None = None,
    brainmask: Volume | None = None,
    config: PrepConfig = PrepConfig(),
) -> PreparedVolume:
    """Turn one scan (and its optional segmentation and brain mask) into prepared slices."""
    for other, what in ((seg, "segmentation"), (brainmask, "brain mask")):
        if other is not None:
            check_same_grid(image, other, what)
    data, ornt = to_ras(image.data, image.affine)
    mask = to_ras(brainmask.data, image.affine)[0] > 0 if brainmask else foreground_mask(data)
    lesion = to_ras(seg.data, image.affine)[0] > 0 if seg else np.zeros(data.shape, bool)
    mask_or_lesion = mask | lesion

    keep = _select_slices(mask_or_lesion, config)
    crop = _square_box(data.shape[:2], config.square)
    images = _resize(_cut(data[:, :, keep], crop), config.size)
    masks = _resize(_cut(mask_or_lesion[:, :, keep], crop), config.size) > 0.5
    segs = (_resize(_cut(lesion[:, :, keep], crop), config.size) > config.seg_threshold) & masks
    images = _normalize(images, masks, config.normalize, image.source)
    return PreparedVolume(
        images=images,
        segs=segs,
        masks=masks,
        slice_index=keep.astype(np.int32),
        ornt=ornt,
        shape=tuple(int(s) for s in image.data.shape),
        crop=crop,
    )


def _select_slices(mask: np.ndarray, config: PrepConfig) -> np.ndarray:
    fraction = mask.reshape(-1, mask.shape[2]).mean(axis=0)
    keep = fraction > config.min_brain_fraction
    if config.slices != "brain":
        start, stop = config.slices
        window = np.zeros_like(keep)
        window[max(start, 0) : stop] = True
        keep &= window
    return np.flatnonzero(keep)


def _square_box(shape: tuple[int, int], mode: str) -> tuple[int, int, int]:
    side = min(shape) if mode == "crop" else max(shape)
    return (shape[0] - side) // 2, (shape[1] - side) // 2, side


def _cut(stack: np.ndarray, box: tuple[int, int, int]) -> np.ndarray:
    """Square in-plane window of an (X, Y, n) stack → (n, side, side); pads with 0 if needed."""
    x0, y0, side = box
    out = np.zeros((side, side, stack.shape[2]), dtype=stack.dtype)
    sx, sy = max(x0, 0), max(y0, 0)
    ex, ey = min(x0 + side, stack.shape[0]), min(y0 + side, stack.shape[1])
    out[sx - x0 : ex - x0, sy - y0 : ey - y0] = stack[sx:ex, sy:ey]
    return np.moveaxis(out, 2, 0)


def _resize(stack: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased bilinear resize of (n, H, W) to (n, size, size), float32."""
    if stack.shape[0] == 0:
        return np.zeros((0, size, size), np.float32)
    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    antialias = size < stack.shape[1]
    out = F.interpolate(
        t, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias
    )
    return out[:, 0].numpy()


def _normalize(images: np.ndarray, masks: np.ndarray, mode: str, source: str) -> np.ndarray:
    inside = images[masks]
    if inside.size == 0:
        return np.zeros_like(images)
    if mode == "equalize":
        if inside.min() == inside.max():
            raise FaeInputError(source, "image is constant inside the brain")
        out = equalize_hist(images, nbins=256, mask=masks)
    else:
        lo, hi = np.percentile(inside, [0.5, 99.5])
        out = np.clip((images - lo) / max(hi - lo, 1e-8), 0.0, 1.0)
    return np.where(masks, out, 0.0).astype(np.float32)


def restore_volume(slices: np.ndarray, prepared: PreparedVolume) -> np.ndarray:
    """Undo :func:`prepare_volume`'s geometry: (n, size, size) maps → the input array's shape.

    Each slice is resized back to the crop square (bilinear), put into its place in the RAS
    volume, and the volume is turned back to the input's axis order and directions, so the
    result lines up voxel for voxel with the input under the input's own affine. Voxels outside
    the prepared slices (and padding) are 0.
    """
    if slices.shape[0] != len(prepared.slice_index):
        raise ValueError(f"{slices.shape[0]} slices for {len(prepared.slice_index)} positions")
    ras_shape = [0, 0, 0]
    for axis, (target, _) in enumerate(prepared.ornt):
        ras_shape[int(target)] = prepared.shape[axis]
    x0, y0, side = prepared.crop
    ras = np.zeros(ras_shape, np.float32)
    if len(slices):
        square = _resize(slices, side)  # (n, side, side)
        sx, sy = max(x0, 0), max(y0, 0)
        ex, ey = min(x0 + side, ras_shape[0]), min(y0 + side, ras_shape[1])
        window = square[:, sx - x0 : ex - x0, sy - y0 : ey - y0]
        ras[sx:ex, sy:ey, prepared.slice_index] = np.moveaxis(window, 0, 2)
    back = nib.orientations.ornt_transform(RAS_ORNT, prepared.ornt)
    return np.ascontiguousarray(nib.orientations.apply_orientation(ras, back), np.float32)
