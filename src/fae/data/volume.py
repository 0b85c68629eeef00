"""Reading 3D volumes (NIfTI, or 2D slice files stacked by slice number) with their geometry.

Every reader validates what it returns, so that bad input surfaces as a one-line
:class:`~fae.errors.FaeInputError` naming the file, never as a traceback deep inside the pipeline.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from fae.errors import FaeInputError

# the most voxels a volume may have (2^30: 4 GiB as float32, 64 scans of 256^3): a header that
# claims more is refused before anything is read
MAX_VOXELS = 2**30


@dataclass(frozen=True)
class Volume:
    """A 3D array with the geometry needed to write results back in the input's space.

    ``data`` is float32 in the file's own voxel order; ``affine`` maps voxel indices to world
    millimetres; ``header`` is the original NIfTI header (``None`` for stacked 2D slices).
    """

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header | None
    source: str

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in millimetres along each array axis."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def orientation(self) -> str:
        """Axis codes such as ``'RAS'`` or ``'LPS'``."""
        return "".join(nib.aff2axcodes(self.affine))


@dataclass(frozen=True)
class NiftiSource:
    """A NIfTI file (``.nii`` or ``.nii.gz``)."""

    path: Path

    def load(self) -> Volume:
        return load_nifti(self.path)

    def files(self) -> tuple[Path, ...]:
        return (self.path,)

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class SliceStackSource:
    """2D image files (one per axial slice, already in slice order) read as one volume.

    ``channel`` picks one channel of multi-channel images (e.g. the LGG TIFFs hold pre-contrast
    T1, FLAIR and post-contrast T1); ``None`` requires single-channel images.
    The volume gets an identity affine: such files carry no geometry.
    """

    paths: tuple[Path, ...]
    channel: int | None = None

    def load(self) -> Volume:
        slices = [_read_slice_image(p, self.channel) for p in self.paths]
        shapes = {s.shape for s in slices}
        if len(shapes) != 1:
            raise FaeInputError(
                self.paths[0].parent, f"slices have different shapes {sorted(shapes)}"
            )
        data = np.stack(slices, axis=-1).astype(np.float32)
        return Volume(data, np.eye(4), None, str(self))

    def files(self) -> tuple[Path, ...]:
        return self.paths

    def __str__(self) -> str:
        first = self.paths[0]
        channel = "" if self.channel is None else f" channel {self.channel}"
        return f"{first.parent}/{first.name}..({len(self.paths)} slices){channel}"


Source = NiftiSource | SliceStackSource


def load_nifti(path: str | Path) -> Volume:
    """Read a 3D NIfTI image as float32, keeping affine and header.

    A trailing singleton 4th dimension is dropped; anything else that is not 3D, a missing or
    unreadable file, or non-finite values raise :class:`FaeInputError`.
    """
    path = Path(path)
    if not path.is_file():
        raise FaeInputError(path, "file not found")
    try:
        image = nib.load(path)  # the header only: check what it claims before reading data
        _check_claims(path, image)
        data = np.asarray(image.dataobj, dtype=np.float32)
    except (
        OSError,
        EOFError,
        ValueError,
        TypeError,
        zlib.error,
        nib.filebasedimages.ImageFileError,
        nib.spatialimages.HeaderDataError,
    ) as err:
        raise FaeInputError(path, f"cannot read NIfTI image ({_one_line(err)})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise FaeInputError(path, f"expected a 3D image, got shape {data.shape}")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise FaeInputError(path, f"contains {bad} NaN or infinite voxels")
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise FaeInputError(path, "degenerate affine (a voxel axis of zero length or NaN)")
    return Volume(data, affine, image.header, str(path))


def _check_claims(path: Path, image: nib.filebasedimages.FileBasedImage) -> None:
    """Refuse, before anything is allocated, complex data and a header that claims more voxels
    than fae reads or (uncompressed) more bytes than the file holds."""
    dtype = np.dtype(image.get_data_dtype())
    if dtype.kind == "c":
        raise FaeInputError(path, f"complex-valued data ({dtype}): give a magnitude image")
    voxels = int(np.prod(image.shape, dtype=np.float64))
    if voxels > MAX_VOXELS:
        shape = " x ".join(map(str, image.shape))
        raise FaeInputError(
            path, f"header claims {shape} = {voxels:,} voxels, more than fae reads ({MAX_VOXELS:,})"
        )
    if not str(path).endswith(".gz"):
        offset = getattr(image.dataobj, "offset", None)  # where the reader will start
        needed = int(offset or image.header.get_data_offset()) + voxels * dtype.itemsize
        have = path.stat().st_size
        if have < needed:
            raise FaeInputError(
                path, f"header claims {needed:,} bytes of image data, the file holds {have:,}"
            )


def check_same_grid(image: Volume, other: Volume, what: str) -> None:
    """Raise unless ``other`` (a segmentation or brain mask) has the image's shape."""
    if other.data.shape != image.data.shape:
        raise FaeInputError(
            other.source,
            f"{what} shape {other.data.shape} differs from image shape {image.data.shape}",
        )


def _read_slice_image(path: Path, channel: int | None) -> np.ndarray:
    try:
        with Image.open(path) as img:
            array = np.asarray(img)
    except (OSError, ValueError) as err:
        raise FaeInputError(path, f"cannot read image ({_one_line(err)})") from None
    if array.ndim == 2:
        if channel not in (None, 0):
            raise FaeInputError(path, f"channel {channel} requested from a single-channel image")
        return array
    if channel is None:
        raise FaeInputError(path, f"image has {array.shape[2]} channels: choose one")
    if not 0 <= channel < array.shape[2]:
        raise FaeInputError(path, f"channel {channel} out of range (image has {array.shape[2]})")
    return array[..., channel]


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
