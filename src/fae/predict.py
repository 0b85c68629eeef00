"""Anomaly maps for new scans, written back in each scan's own space (``fae predict``).

For every scan: ``<name>_anomaly.nii.gz`` (the map, float32, the input's shape and affine),
``<name>_mask.nii.gz`` (the map at the run's calibrated threshold), ``<name>_overlay.png`` and a
row of ``scores.csv``. Preprocessing comes from the run's checkpoint. Slices of several scans
share a batch; an unreadable scan is reported and skipped, the rest are still written.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fae.calibration import fpr_key, intensity_stats, intensity_warning
from fae.data.discover import MODALITY_ALIASES, discover, file_role
from fae.data.preprocess import PreparedVolume, prepare_volume, restore_volume
from fae.data.volume import NiftiSource, Source, Volume
from fae.errors import FaeInputError
from fae.io import atomic_path, save_nifti
from fae.methods.base import AnomalyMethod
from fae.viz import save_overlay

SCORE_COLUMNS = (
    "name",
    "source",
    "scan_score",
    "suspicious_voxels",
    "suspicious_slices",
    "slices",
    "fpr",
    "pixel_threshold",
    "slice_threshold",
    "warnings",
)
OVERLAY_SLICES = 24
KNOWN_MODALITIES = set(MODALITY_ALIASES.values())
# more of the brain than this (and than 5x the calibrated rate) above threshold: warn
WIDESPREAD_FRACTION = 0.25


@dataclass(frozen=True)
class Scan:
    """One scan to predict: an output name, the image, and its brain mask when there is one."""

    name: str
    image: Source
    brainmask: Source | None = None
    modality: str | None = None  # what the file name or dataset says the scan is


@dataclass
class _Loaded:
    scan: Scan
    volume: Volume
    prepared: PreparedVolume
    warnings: list[str] = field(default_factory=list)


def collect_scans(
    inputs: Sequence[Path], modality: str, channels: Sequence[str] | None = None
) -> tuple[list[Scan], list[tuple[str, str]]]:
    """NIfTI files, dataset folders and datalists → scans (the run's modality of each subject).

    Returns the scans and ``(input, problem)`` for inputs that cannot be used.
    """
    scans: list[Scan] = []
    failures: list[tuple[str, str]] = []
    for path in map(Path, inputs):
        if not path.exists():
            failures.append((str(path), "no such file or folder"))
        elif path.is_file() and path.name.lower().endswith((".nii", ".nii.gz")):
            name = path.name[: -len(".nii.gz")] if path.name.endswith(".gz") else path.stem
            scans.append(Scan(name, NiftiSource(path), modality=file_role(path)[1]))
        else:
            try:
                dataset = discover(path, channels)
            except FaeInputError as err:
                failures.append((str(err.path or path), err.problem))
                continue
            for subject in dataset.subjects:
                images = subject.images
                if modality not in images and len(images) > 1:
                    failures.append((f"{path}/{subject.id}", f"has no {modality} image"))
                    continue
                key = modality if modality in images else next(iter(images))
                known = key if key in KNOWN_MODALITIES else None
                scans.append(Scan(subject.id, images[key], subject.brainmask, known))
    return _unique_names(scans), failures


def predict_scans(
    estimator: AnomalyMethod,
    scans: Sequence[Scan],
    out: Path,
    fpr: float = 0.05,
    batch_size: int = 64,
    progress: bool = True,
    failures: list[tuple[str, str]] | None = None,
) -> tuple[list[dict], list[tuple[str, str]]]:
    """Predict every scan into ``out``; returns the ``scores.csv`` rows and the failures.

    ``fpr`` picks the calibrated operating point (pixel and slice thresholds) of the run.
    """
    pixel_t, slice_t = _thresholds(estimator, fpr)
    calibration = estimator.calibration_
    healthy_max = float(calibration.get("max", 0.0))
    vmax = healthy_max if healthy_max > pixel_t * 1.05 else pixel_t * 1.5
    reference = estimator.meta.get("intensity", {})
    failures = list(failures or [])
    rows: list[dict] = []
    out.mkdir(parents=True, exist_ok=True)
    pending: list[_Loaded] = []

    def flush() -> None:
        if not pending:
            return
        images = np.concatenate([p.prepared.images for p in pending])
        masks = np.concatenate([p.prepared.masks for p in pending])
        maps = estimator.predict(images, masks, batch_size) if len(images) else images
        start = 0
        for item in pending:
            n = len(item.prepared.images)
            scan_maps = maps[start : start + n]
            start += n
            try:
                row = _write_scan(estimator, item, scan_maps, out, fpr, pixel_t, slice_t)
                _save_overlay(item, scan_maps, out, pixel_t, vmax, row)
                rows.append(row)
            except (OSError, ValueError, RuntimeError) as err:  # e.g. a full disk
                failures.append((str(item.scan.image), f"cannot write outputs ({err})"))
                tqdm.write(
                    f"fae: error: {item.scan.image}: cannot write outputs ({err})", file=sys.stderr
                )
            bar.update(1)
        pending.clear()

    quiet = estimator.progress
    estimator.progress = False  # one bar over scans, not one per batch
    bar = tqdm(total=len(scans), desc="predicting", unit="scan", disable=not progress)
    try:
        for scan in scans:
            try:
                item = _load(scan, estimator, reference)
            except FaeInputError as err:
                failures.append((str(err.path or scan.image), err.problem))
                tqdm.write(f"fae: error: {err} (skipped)", file=sys.stderr)
                bar.update(1)
                continue
            for warning in item.warnings:
                tqdm.write(f"fae: warning: {scan.image}: {warning}", file=sys.stderr)
            pending.append(item)
            if sum(len(p.prepared.images) for p in pending) >= batch_size:
                flush()
        flush()
    finally:  # the scans written so far are listed even if something unexpected stopped us
        bar.close()
        estimator.progress = quiet
        _write_scores(rows, out / "scores.csv")
    return rows, failures


def _thresholds(estimator: AnomalyMethod, fpr: float) -> tuple[float, float]:
    calibration = getattr(estimator, "calibration_", None)
    if not calibration:
        raise FaeInputError(
            None, "the run has no calibrated thresholds: run `fae calibrate --run RUN --data DIR`"
        )
    key = fpr_key(fpr)
    if key not in calibration["pixel"] or key not in calibration["slice"]:
        have = ", ".join(sorted(calibration["pixel"], key=float))
        raise FaeInputError(None, f"--fpr {fpr:g} is not calibrated; this run has {have}")
    return float(calibration["pixel"][key]), float(calibration["slice"][key])


def _load(scan: Scan, estimator: AnomalyMethod, reference: dict) -> _Loaded:
    volume = scan.image.load()
    brainmask = scan.brainmask.load() if scan.brainmask is not None else None
    prepared = prepare_volume(volume, None, brainmask, estimator.prep)
    if len(prepared.images) == 0:
        raise FaeInputError(scan.image, "no brain found in the scan")
    warnings = []
    trained_on = estimator.meta.get("modality")
    if scan.modality and trained_on and scan.modality != trained_on:
        warnings.append(f"looks like {scan.modality}, but the run was trained on {trained_on}")
    if (warning := intensity_warning(intensity_stats(volume, brainmask), reference)) is not None:
        warnings.append(warning)
    return _Loaded(scan, volume, prepared, warnings)


def _write_scan(
    estimator: AnomalyMethod,
    item: _Loaded,
    maps: np.ndarray,
    out: Path,
    fpr: float,
    pixel_t: float,
    slice_t: float,
) -> dict:
    prepared, volume, name = item.prepared, item.volume, item.scan.name
    native = restore_volume(maps, prepared)
    brain = restore_volume(prepared.masks.astype(np.float32), prepared) > 0.5
    suspicious = brain & (native >= pixel_t)
    header = volume.header.copy() if volume.header is not None else None
    if header is not None:  # the input's scaling and display range do not apply to a map
        header.set_slope_inter(None, None)
        header["cal_min"] = header["cal_max"] = 0
        header["descrip"] = b"fae anomaly map"
    save_nifti(native, volume.affine, out / f"{name}_anomaly.nii.gz", header)
    save_nifti(suspicious.astype(np.uint8), volume.affine, out / f"{name}_mask.nii.gz", header)
    scores = estimator.slice_scores(maps, prepared.masks)
    widespread = float(np.mean(maps[prepared.masks] >= pixel_t)) if prepared.masks.any() else 0.0
    if widespread > max(WIDESPREAD_FRACTION, 5 * fpr):
        item.warnings.append(
            f"{widespread:.0%} of the brain is above the threshold (healthy scans: {fpr:.1%}); "
            "the scan may differ from the training data"
        )
        tqdm.write(f"fae: warning: {item.scan.image}: {item.warnings[-1]}", file=sys.stderr)
    return {
        "name": name,
        "source": str(item.scan.image),
        "scan_score": float(scores.max()),
        "suspicious_voxels": int(suspicious.sum()),
        "suspicious_slices": int((scores >= slice_t).sum()),
        "slices": len(scores),
        "fpr": fpr,
        "pixel_threshold": pixel_t,
        "slice_threshold": slice_t,
        "warnings": "; ".join(item.warnings),
    }


def _save_overlay(
    item: _Loaded, maps: np.ndarray, out: Path, vmin: float, vmax: float, row: dict
) -> None:
    prepared = item.prepared
    n = len(prepared.images)
    pick = np.unique(np.linspace(0, n - 1, min(n, OVERLAY_SLICES)).round().astype(int))
    title = (
        f"{item.scan.name}: scan score {row['scan_score']:.3f}, "
        f"{row['suspicious_slices']}/{n} slices above the {row['fpr']:g}-FPR slice threshold"
    )
    save_overlay(
        prepared.images[pick],
        maps[pick],
        out / f"{item.scan.name}_overlay.png",
        vmin,
        vmax,
        [f"z={prepared.slice_index[k]}" for k in pick],
        title,
    )


def _write_scores(rows: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, SCORE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _unique_names(scans: list[Scan]) -> list[Scan]:
    """Make output names unique: a repeated name gets ``_2``, ``_3``... appended."""
    used: set[str] = set()
    unique = []
    for scan in scans:
        name, count = scan.name, 1
        while name in used:
            count += 1
            name = f"{scan.name}_{count}"
        used.add(name)
        unique.append(Scan(name, scan.image, scan.brainmask, scan.modality))
    return unique
