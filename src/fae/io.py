"""Atomic file writing: outputs appear whole or not at all."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from fae.errors import FaeInputError

LOCK_NAME = ".fae.lock"
# write errors that are the output folder's problem, not fae's: disk full, over quota,
# read-only, no permission
UNWRITABLE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
FULL_BYTES = 1 << 20  # a failed write with less than this left on the disk: the disk is full


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the full suffix (``.nii.gz``, ``.npz``...) so that libraries
    choosing a format by extension still work. A full disk or an unwritable folder becomes one
    :class:`FaeInputError` naming ``path``, with nothing left behind.
    """
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = "".join(path.suffixes) or ".tmp"
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.stem.split('.')[0]}-", suffix=suffix, dir=path.parent
        )
        os.close(fd)
        tmp_path = Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600: give the usual permissions
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as err:
        name = None if err.filename is None else Path(err.filename)
        here = name is None or name.parent == path.parent or name in path.parents
        if err.errno not in UNWRITABLE or not here:  # e.g. an input the block reads
            raise
        raise FaeInputError(path, f"cannot write ({err.strerror})") from None
    except RuntimeError:  # torch.save reports a full disk as a RuntimeError of its zip writer
        if tmp_path is None or shutil.disk_usage(path.parent).free > FULL_BYTES:
            raise
        raise FaeInputError(path, "cannot write (No space left on device)") from None
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_paths(paths: Sequence[str | Path]) -> Iterator[list[Path]]:
    """Temporary paths beside each of ``paths``, renamed onto them only if the whole block
    succeeds: a set of outputs (a scan's map, masks and picture) appears together or not at all."""
    try:
        with contextlib.ExitStack() as stack:
            yield [stack.enter_context(atomic_path(p)) for p in paths]
    except FaeInputError as err:  # it names a temporary file: name the outputs' folder
        raise FaeInputError(Path(paths[0]).parent, err.problem) from None


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
def folder_lock(folder: str | Path, shard: int | None = None) -> Iterator[Path]:
    """Hold ``folder``'s lock while a run trains or predictions are written into it, so that two
    fae processes never interleave their outputs there: the second gets one line naming the
    first. The lock is an advisory ``flock`` on ``.fae.lock``, which the system releases when
    the process ends, however it ends (a killed process leaves no stale lock). Shards of one
    prediction (``shard`` = K) share the folder: each holds ``.fae.lock`` shared and its own
    ``.fae-shard-K.lock`` exclusively. A folder made here (not by a shard) and left with nothing
    but the lock in it is removed again."""
    folder = Path(folder)
    created = not folder.exists()
    names = [LOCK_NAME] if shard is None else [LOCK_NAME, f".fae-shard-{shard}.lock"]
    modes = [fcntl.LOCK_EX] if shard is None else [fcntl.LOCK_SH, fcntl.LOCK_EX]
    handles, held = [], False
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handles = [(folder / name).open("a+") for name in names]
        except OSError as err:
            raise FaeInputError(folder, f"cannot write here ({err.strerror or err})") from None
        for handle, mode in zip(handles, modes, strict=True):
            try:
                fcntl.flock(handle, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                shards = "shards of fae predict" if any(folder.glob(".fae-shard-*.lock")) else ""
                holder = handle.read().strip() or shards or "another process"
                raise FaeInputError(
                    folder, f"in use by another fae process ({holder}): wait for it to finish"
                ) from None
        mine = handles[-1]  # the exclusive one says who holds it
        mine.seek(0)
        mine.truncate()
        mine.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        mine.flush()
        held = True
        yield folder
    finally:
        if held:
            handles[-1].truncate(0)  # who held it is no longer true
        for handle in handles:
            handle.close()  # releases the lock
        if shard is None and created and folder.is_dir() and os.listdir(folder) == [LOCK_NAME]:
            (folder / LOCK_NAME).unlink()
            folder.rmdir()
