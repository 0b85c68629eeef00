"""On-disk cache of prepared volumes, keyed by the preparation settings and the input files.

A second run with the same settings on unchanged files loads ``.npz`` files instead of redoing
the work; changing a setting, or touching an input file, makes a new key.
"""

from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

from fae.data.brainmask import settings_key
from fae.data.discover import Subject
from fae.data.preprocess import PreparedVolume, PrepConfig
from fae.errors import FaeInputError
from fae.io import atomic_path

CACHE_FORMAT = 2


def default_cache_dir() -> Path:
    """``$FAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/fae``, else ``~/.cache/fae``."""
    if "FAE_CACHE_DIR" in os.environ:
        return Path(os.environ["FAE_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "fae"


def cache_path(cache_dir: Path, subject: Subject, modality: str, config: PrepConfig) -> Path:
    """Where the prepared slices of ``subject``'s ``modality`` are cached."""
    h = hashlib.sha256(f"{CACHE_FORMAT}|{config.key()}|{modality}".encode())
    if config.brain_mask in ("auto", "hd-bet"):
        h.update(settings_key().encode())  # HD-BET's version and the geometry guess
    sources = [subject.images[modality], subject.seg, subject.brainmask]
    for source in sources:
        for f in source.files() if source is not None else ():
            st = f.stat()
            h.update(f"|{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        h.update(b"|-")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in subject.id)
    return cache_dir / f"prep-{config.key()}" / f"{safe}-{modality}-{h.hexdigest()[:16]}.npz"


def load_cached(path: Path) -> PreparedVolume | None:
    """The cached volume at ``path``, or ``None`` if absent or unreadable (then it is redone)."""
    try:
        with np.load(path) as z:
            return PreparedVolume(
                images=z["images"],
                segs=z["segs"],
                masks=z["masks"],
                slice_index=z["slice_index"],
                ornt=z["ornt"],
                shape=tuple(int(v) for v in z["shape"]),
                crop=tuple(int(v) for v in z["crop"]),
                mask_method=str(z["mask_method"]),
                intensity=tuple(float(v) for v in z["intensity"]),
            )
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def save_cached(path: Path, volume: PreparedVolume) -> None:
    """Write a prepared volume atomically. A cache that cannot be written (a full disk, a
    read-only folder) only costs speed: a warning, and the work goes on without it."""
    try:
        _write(path, volume)
    except FaeInputError as err:
        warning = f"fae: warning: {path.parent}: cannot write the cache ({err.problem})"
        print(warning, file=sys.stderr)


def _write(path: Path, volume: PreparedVolume) -> None:
    with atomic_path(path) as tmp:
        np.savez(
            tmp,
            images=volume.images,
            segs=volume.segs,
            masks=volume.masks,
            slice_index=volume.slice_index,
            ornt=volume.ornt,
            shape=np.asarray(volume.shape),
            crop=np.asarray(volume.crop),
            mask_method=np.asarray(volume.mask_method),
            intensity=np.asarray(volume.intensity),
        )
