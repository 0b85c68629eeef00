"""``fae data skullstrip``: brain masks (and, on request, stripped images) for many scans.

For every scan: ``<name>_brainmask.nii.gz`` (uint8 0/1, exactly the input's shape, affine and
header geometry) and with ``stripped=True`` ``<name>_stripped.nii.gz`` (the image, 0 outside the
brain). ``brainmasks.csv`` says how each mask was made (HD-BET, or the non-zero voxels of a scan
that is already skull-stripped), with which voxel size and where it came from, the brain volume
and the time taken; ``datalist.csv`` lists every NIfTI scan with its new mask, so that
``fae train --data OUT/datalist.csv --brain-mask given`` uses them directly.
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fae.data.brainmask import (
    axial_axis,
    fill_slices,
    foreground,
    has_geometry,
    hd_bet_geometry,
    hd_bet_mask,
    looks_skull_stripped,
)
from fae.data.discover import MODALITY_ALIASES, Scan, unique_names
from fae.data.volume import NiftiSource, Volume
from fae.device import resolve_device
from fae.errors import FaeInputError
from fae.io import atomic_path, atomic_paths, derived_header, save_nifti

MASK_COLUMNS = (
    "name",
    "source",
    "method",
    "geometry",
    "spacing",
    "brain_voxels",
    "brain_ml",
    "seconds",
)
DATALIST_COLUMNS = ("subject", "modality", "image", "seg", "brainmask", "split")


def skullstrip_scans(
    scans: Sequence[Scan],
    out: Path,
    mode: str = "fast",
    tta: bool = False,
    spacing: tuple[float, float, float] | None = None,
    device: str = "auto",
    stripped: bool = False,
    force: bool = False,
    cache_dir: Path | None = None,
    progress: bool = True,
    failures: list[tuple[str, str]] | None = None,
) -> tuple[list[dict], list[tuple[str, str]]]:
    """Write every scan's brain mask into ``out``; returns the ``brainmasks.csv`` rows and the
    ``(input, problem)`` failures (each reported on one line and skipped).

    Scans that are already skull-stripped keep their non-zero voxels unless ``force``; the rest
    go through HD-BET (``mode``, ``tta``, ``device``; ``spacing`` overrides the voxel size that
    HD-BET is told, see :func:`~fae.data.brainmask.hd_bet_geometry`). A rerun finds HD-BET's
    masks in ``cache_dir``.
    """
    resolve_device(device)  # a missing GPU is one error, not one per scan
    failures = list(failures or [])
    rows: list[dict] = []
    listed: list[dict] = []
    out.mkdir(parents=True, exist_ok=True)
    scans = unique_names([replace(scan, name=mask_name(scan)) for scan in scans])
    try:
        for scan in tqdm(scans, desc="skull-stripping", unit="scan", disable=not progress):
            try:
                volume = scan.image.load()
                row = _strip_one(
                    scan, volume, out, mode, tta, spacing, device, stripped, force, cache_dir
                )
            except FaeInputError as err:
                failures.append((str(err.path or scan.image), err.problem))
                tqdm.write(
                    f"fae: error: {err.path or scan.image}: {err.problem} (skipped)", sys.stderr
                )
                continue
            except OSError as err:  # e.g. a full disk or a read-only folder
                failures.append((str(scan.image), f"cannot write outputs ({err})"))
                tqdm.write(f"fae: error: {scan.image}: cannot write outputs ({err})", sys.stderr)
                continue
            rows.append(row)
            if isinstance(scan.image, NiftiSource):
                listed.append(_datalist_row(scan, out / f"{scan.name}_brainmask.nii.gz"))
    finally:  # what was written so far is listed even if something unexpected stopped us
        _write_csv(out / "brainmasks.csv", MASK_COLUMNS, rows)
        _write_csv(out / "datalist.csv", DATALIST_COLUMNS, listed)
    return rows, failures


def mask_name(scan: Scan) -> str:
    """``<case>`` for ``<case>_<modality>.nii.gz`` files (so that ``<case>_brainmask.nii.gz`` sits
    beside ``<case>``'s images in the flat layout), else the scan's own name."""
    if isinstance(scan.image, NiftiSource) and scan.modality and "_" in scan.name:
        head, last = scan.name.rsplit("_", 1)
        if last.lower() in {scan.modality, *_aliases(scan.modality)}:
            return head
    return scan.name


def _aliases(modality: str) -> set[str]:
    return {alias for alias, name in MODALITY_ALIASES.items() if name == modality}


def _strip_one(
    scan: Scan,
    volume: Volume,
    out: Path,
    mode: str,
    tta: bool,
    spacing: tuple[float, float, float] | None,
    device: str,
    stripped: bool,
    force: bool,
    cache_dir: Path | None,
) -> dict:
    started = time.perf_counter()
    if not force and looks_skull_stripped(volume):
        mask = fill_slices(foreground(volume.data), axial_axis(volume.affine))
        method, geometry, voxel = "nonzero (already skull-stripped)", "header", volume.spacing
    else:
        _, voxel = hd_bet_geometry(volume, spacing)
        geometry = "--spacing" if spacing else "header" if has_geometry(volume) else "guessed"
        mask = hd_bet_mask(volume, mode, tta, spacing, cache_dir, device)
        method = f"hd-bet {mode}{' tta' if tta else ''}"
    seconds = time.perf_counter() - started
    outputs = [(f"{scan.name}_brainmask.nii.gz", mask.astype(np.uint8), "brain mask")]
    if stripped:
        image = np.where(mask, volume.data, 0).astype(np.float32)
        outputs.append((f"{scan.name}_stripped.nii.gz", image, "skull-stripped"))
    with atomic_paths([out / name for name, _, _ in outputs]) as paths:  # all or none
        for path, (_, data, description) in zip(paths, outputs, strict=True):
            save_nifti(data, volume.affine, path, derived_header(volume.header, description))
    ml = float(mask.sum()) * float(np.prod(voxel)) / 1000.0
    return {
        "name": scan.name,
        "source": str(scan.image),
        "method": method,
        "geometry": geometry,
        "spacing": "x".join(f"{v:.3g}" for v in voxel),
        "brain_voxels": int(mask.sum()),
        "brain_ml": round(ml, 1),
        "seconds": round(seconds, 2),
    }


def _datalist_row(scan: Scan, mask: Path) -> dict:
    seg = scan.seg.path.resolve() if isinstance(scan.seg, NiftiSource) else ""
    return {
        "subject": scan.name,
        "modality": scan.modality or "",
        "image": scan.image.path.resolve(),
        "seg": seg,
        "brainmask": mask.name,
        "split": scan.split or "",
    }


def _write_csv(path: Path, columns: Sequence[str], rows: list[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        writer.writerows(rows)
