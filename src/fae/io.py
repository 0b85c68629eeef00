"""Atomic file writing: outputs appear whole or not at all."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from fae.errors import FaeInputError

LOCK_NAME = ".fae.lock"


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


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold ``folder``'s lock while a run trains or predictions are written into it, so that two
    fae processes never interleave their outputs there: the second gets one line naming the
    first. The lock is an advisory ``flock`` on ``.fae.lock``, which the system releases when
    the process ends, however it ends (a killed process leaves no stale lock). A folder made
    here and left with nothing but the lock in it is removed again."""
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = (folder / LOCK_NAME).open("a+")
    except OSError as err:
        raise FaeInputError(folder, f"cannot write here ({err.strerror or err})") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise FaeInputError(
                folder, f"in use by another fae process ({holder}): wait for it to finish"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        yield folder
    finally:
        handle.close()  # releases the lock
        if created and [p.name for p in folder.iterdir()] == [LOCK_NAME]:
            (folder / LOCK_NAME).unlink()
            folder.rmdir()
