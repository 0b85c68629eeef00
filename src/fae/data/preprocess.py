"""Volume → 2D slices, as in the paper: axial slices, centre crop, resize, histogram equalisation.

:func:`prepare_volume` keeps everything needed to undo its geometry later (reorientation, slice
selection, crop), so that anomaly maps can be written back in each scan's own space.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from skimage.exposure import equalize_hist

from fae.data.brainmask import BrainMask, brain_mask, check_mask_source
from fae.data.volume import Volume, check_same_grid
from fae.errors import FaeInputError

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
    brain_mask: where the brain mask comes from: ``"auto"`` (the scan's own mask file, else its
        non-zero voxels when it is skull-stripped, else HD-BET), ``"given"``, ``"hd-bet"``,
        ``"nonzero"`` or ``"otsu"`` (see :mod:`fae.data.brainmask`).
    hd_bet_mode, hd_bet_tta: HD-BET's ``"fast"`` (one network) or ``"accurate"`` (five) mode, and
        whether to average mirrored copies (test-time augmentation, 8x the time).
    """

    size: int = 128
    slices: Literal["brain"] | tuple[int, int] = "brain"
    min_brain_fraction: float = 0.0
    square: Literal["crop", "pad"] = "crop"
    normalize: Literal["equalize", "minmax"] = "equalize"
    seg_threshold: float = 0.4
    brain_mask: Literal["auto", "given", "hd-bet", "otsu", "nonzero"] = "auto"
    hd_bet_mode: Literal["fast", "accurate"] = "fast"
    hd_bet_tta: bool = False

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
        check_mask_source(self.brain_mask, self.hd_bet_mode)
        if self.brain_mask not in ("auto", "hd-bet"):  # HD-BET settings unused: one spelling
            object.__setattr__(self, "hd_bet_mode", "fast")
            object.__setattr__(self, "hd_bet_tta", False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["slices"] = self.slices if self.slices == "brain" else list(self.slices)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PrepConfig:
        """Settings saved by :meth:`to_dict`; every field must be there (a run saved by an older
        fae, e.g. from before the brain-mask setting, is refused)."""
        missing = [f.name for f in fields(cls) if f.name not in d]
        if missing:
            raise FaeInputError(
                None, f"saved by an older fae (no setting {missing[0]!r}): train it again"
            )
        d = dict(d)
        if d.get("slices", "brain") != "brain":
            d["slices"] = tuple(d["slices"])
        return cls(**d)

    def key(self) -> str:
        """A short hash of the settings, used to key the slice cache."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def with_brain_mask(config: PrepConfig, source: str | None) -> PrepConfig:
    """``config`` with another brain-mask source (``None``: unchanged), e.g. to predict scans
    that lack the mask files a run was trained with."""
    return config if source is None else replace(config, brain_mask=source)


@dataclass(frozen=True)
class PreparedVolume:
    """Prepared slices of one scan plus the geometry to map them back.

    images: (n, size, size) float32 in [0, 1], 0 outside the brain.
    segs, masks: (n, size, size) bool lesion and brain masks.
    slice_index: (n,) axial index of each slice in the RAS-reoriented volume.
    ornt: nibabel orientation that took the input array to RAS.
    shape: the input array's shape; crop: (x0, y0, side) of the square taken in-plane
    (negative offsets mean padding).
    mask_method: how the brain mask was obtained (``"given"``, ``"hd-bet"``, ``"nonzero"``,
    ``"otsu"``); intensity: (1st, 99th) percentile of the raw scan inside it, the reference that
    prediction compares new scans with.
    """

    images: np.ndarray
    segs: np.ndarray
    masks: np.ndarray
    slice_index: np.ndarray
    ornt: np.ndarray
    shape: tuple[int, int, int]
    crop: tuple[int, int, int]
    mask_method: str
    intensity: tuple[float, float]


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient an array to the closest RAS axes; returns the array and the orientation used."""
    ornt = nib.orientations.io_orientation(affine)
    return nib.orientations.apply_orientation(data, ornt), ornt


def prepare_volume(
    image: Volume,
    seg: Volume | None = None,
    brainmask: Volume | BrainMask | None = None,
    config: PrepConfig = PrepConfig(),
    cache_dir: Path | None = None,
    device: str = "auto",
) -> PreparedVolume:
    """Turn one scan (and its optional segmentation) into prepared slices.

    ``brainmask``: a resolved :class:`~fae.data.brainmask.BrainMask`, or the mask file that came
    with the scan (a :class:`Volume`) or ``None``, from which ``config.brain_mask`` decides
    (HD-BET runs on ``device``; its masks are cached in ``cache_dir``).
    """
    if seg is not None:
        check_same_grid(image, seg, "segmentation")
    if not isinstance(brainmask, BrainMask):
        brainmask = brain_mask(
            image,
            brainmask,
            config.brain_mask,
            config.hd_bet_mode,
            config.hd_bet_tta,
            cache_dir,
            device,
        )
    elif brainmask.mask.shape != image.data.shape:
        raise FaeInputError(
            image.source,
            f"brain mask shape {brainmask.mask.shape} differs from image shape {image.data.shape}",
        )
    data, ornt = to_ras(image.data, image.affine)
    mask = to_ras(brainmask.mask, image.affine)[0]
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
        mask_method=brainmask.method,
        intensity=intensity_stats(image.data, brainmask.mask),
    )


def intensity_stats(data: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(1st, 99th) percentile of a raw scan's intensities inside its brain mask (NaN when the
    mask is empty)."""
    inside = data[mask]
    if inside.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(inside, [1, 99])
    return float(low), float(high)


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
    """Bilinear resize of (n, H, W) to (n, size, size), float32, anti-aliased when shrinking:
    PyTorch's ``interpolate(mode="bilinear", align_corners=False, antialias=size < H)`` (its
    anti-aliased filter is PIL's), written as two weight matrices so that preparing a scan
    needs no torch (``fae predict --onnx``); tested against PyTorch."""
    if stack.shape[0] == 0:
        return np.zeros((0, size, size), np.float32)
    antialias = size < stack.shape[1]
    rows = _bilinear_weights(stack.shape[1], size, antialias)
    cols = _bilinear_weights(stack.shape[2], size, antialias)
    # two single matrix products over the whole stack (a batched matmul is 100x slower here)
    n, height, width = stack.shape
    wide = np.asarray(stack, np.float32).reshape(n * height, width) @ cols.T  # (n*H, size)
    tall = rows @ wide.reshape(n, height, size).transpose(1, 0, 2).reshape(height, n * size)
    return np.ascontiguousarray(tall.reshape(size, n, size).transpose(1, 0, 2))


def _bilinear_weights(n_in: int, n_out: int, antialias: bool) -> np.ndarray:
    """(n_out, n_in) weights of 1-D bilinear resampling with half-pixel centres; with
    ``antialias`` when shrinking, the triangle filter widened by the scale (PIL's, PyTorch's).
    Computed in float32 in PyTorch's order of operations, so that the resized slices are
    PyTorch's bit for bit."""
    f32 = np.float32
    scale = f32(n_in / n_out)
    out = np.arange(n_out)
    weights = np.zeros((n_out, n_in), f32)
    if antialias and scale > 1:
        centre = scale * (out.astype(f32) + f32(0.5))
        first = np.maximum((centre - scale + f32(0.5)).astype(np.int64), 0)
        last = np.minimum((centre + scale + f32(0.5)).astype(np.int64), n_in)
        inverse = f32(1) / scale
        taps = np.zeros((n_out, int((last - first).max())), f32)
        total = np.zeros(n_out, f32)
        for k in range(taps.shape[1]):  # in order, as PyTorch sums them
            x = ((first + k).astype(f32) - centre + f32(0.5)) * inverse
            taps[:, k] = np.where(first + k < last, np.maximum(f32(1) - np.abs(x), f32(0)), 0)
            total += taps[:, k]
        for k in range(taps.shape[1]):
            inside = first + k < last
            weights[out[inside], (first + k)[inside]] = taps[inside, k] / total[inside]
    else:
        source = np.maximum(scale * (out.astype(f32) + f32(0.5)) - f32(0.5), f32(0))
        low = source.astype(np.int64)
        high = np.minimum(low + 1, n_in - 1)
        frac = source - low.astype(f32)
        np.add.at(weights, (out, low), f32(1) - frac)
        np.add.at(weights, (out, high), frac)
    return weights


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
