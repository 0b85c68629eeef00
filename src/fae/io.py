"""Atomic file writing: outputs appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the full suffix (``.nii.gz``, ``.npz``...) so that libraries
    choosing a format by extension still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem.split('.')[0]}-", suffix=suffix, dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_paths(paths: Sequence[str | Path]) -> Iterator[list[Path]]:
    """Temporary paths beside each of ``paths``, renamed onto them only if the whole block
    succeeds: a set of outputs (a scan's map, masks and picture) appears together or not at all."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(atomic_path(p)) for p in paths]


def save_nifti(
    data: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    header: nib.Nifti1Header | None = None,
) -> Path:
    """Write a NIfTI image atomically and return its path."""
    image = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64), header)
    if header is not None:
        image.set_data_dtype(np.asarray(data).dtype)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return Path(path)


def derived_header(header: nib.Nifti1Header | None, description: str) -> nib.Nifti1Header | None:
    """A copy of an input's header for an image derived from it (a map, a mask): the input's
    intensity scaling and display range do not apply, the description says what it is."""
    if header is None:
        return None
    header = header.copy()
    header.set_slope_inter(None, None)
    header["cal_min"] = header["cal_max"] = 0
    header["descrip"] = description.encode()[:79]
    return header
