"""Anomaly maps for new scans, written back in each scan's own space (``fae predict``).

For every scan: ``<name>_anomaly.nii.gz`` (the map, float32, the input's shape and affine, 0
outside the brain), ``<name>_brainmask.nii.gz`` (the brain mask it used), ``<name>_mask.nii.gz``
(the map at the run's calibrated threshold), ``<name>_overlay.png`` and a row of ``scores.csv``.
Preprocessing, brain extraction included, comes from the run's checkpoint. Slices of several
scans share a batch; an unreadable scan is reported and skipped, the rest are still written.
Scans are read, mapped and written a group at a time, so memory does not grow with their number.

Many scans can be split over N workers (:class:`Shard`): worker K of N predicts every N-th
input from the K-th into the same folder and writes ``scores-K.csv`` and ``shard-K.json``
instead of ``scores.csv``; :func:`merge_shards` then joins them into the ``scores.csv`` that one
worker would have written.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from fae.calibration import intensity_warning
from fae.config import BATCH_SIZE
from fae.data.brainmask import BrainMask, brain_mask, has_geometry, voxel_ml
from fae.data.discover import KNOWN_MODALITIES, Scan
from fae.data.preprocess import (
    PreparedVolume,
    PrepConfig,
    prepare_volume,
    restore_volume,
    with_brain_mask,
)
from fae.data.volume import Volume
from fae.errors import FaeInputError
from fae.io import atomic_path, atomic_paths, derived_header, folder_lock, save_nifti
from fae.viz import save_overlay

if TYPE_CHECKING:  # the prediction path imports no torch: an exported model runs without it
    from fae.exported import ExportedModel
    from fae.methods.base import AnomalyMethod

    Predictor = AnomalyMethod | ExportedModel

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
    "brain_mask",
    "brain_ml",
    "warnings",
)
OVERLAY_SLICES = 24
# more of the brain than this (and than 5x the calibrated rate) above threshold: warn
WIDESPREAD_FRACTION = 0.25


@dataclass(frozen=True)
class Shard:
    """Worker ``index`` (1-based) of ``count``: it predicts the inputs ``index``, ``index`` +
    ``count``, ... of the full, ordered input list (round robin, so shards get similar work)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"K/N"`` with 1 ≤ K ≤ N."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            index = count = 0
        if not 1 <= index <= count:
            raise FaeInputError(None, f"--shard must be K/N with 1 <= K <= N, got {text!r}")
        return cls(index, count)

    @classmethod
    def from_torchrun(cls) -> Shard | None:
        """This process's shard under ``torchrun`` (rank + 1 of the world size), else None."""
        count, rank = int(os.environ.get("WORLD_SIZE", "1")), os.environ.get("RANK")
        return cls(int(rank) + 1, count) if count > 1 and rank is not None else None

    def take(self, items: Sequence) -> list:
        return list(items[self.index - 1 :: self.count])

    @property
    def scores(self) -> str:
        return f"scores-{self.index}.csv"

    @property
    def record(self) -> str:
        return f"shard-{self.index}.json"


@dataclass
class _Loaded:
    scan: Scan
    volume: Volume
    brain: BrainMask
    prepared: PreparedVolume
    warnings: list[str] = field(default_factory=list)


def predict_scans(
    estimator: Predictor,
    scans: Sequence[Scan],
    out: Path,
    fpr: float = 0.05,
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
    failures: list[tuple[str, str]] | None = None,
    cache_dir: Path | None = None,
    brain_mask_source: str | None = None,
    shard: Shard | None = None,
) -> tuple[list[dict], list[tuple[str, str]]]:
    """Predict every scan into ``out``; returns the ``scores.csv`` rows and the failures.
    With ``shard``, only that shard's scans (``failures`` of the inputs are the first shard's
    to report), into ``scores-K.csv``, and ``shard-K.json`` (which scans it had, which failed).

    ``fpr`` picks the calibrated operating point (pixel and slice thresholds) of the run;
    ``cache_dir`` keeps HD-BET's brain masks, so that a scan predicted again is not re-stripped;
    ``brain_mask_source`` replaces the run's own (e.g. ``"hd-bet"`` for scans without the mask
    files a ``"given"`` run was trained with).
    """
    order = {scan.name: i for i, scan in enumerate(scans)}
    if shard is not None:
        scans = shard.take(scans)
        failures = failures if shard.index == 1 else []
    with folder_lock(out, shard.index if shard else None):  # one process per folder (or shard)
        if shard is not None:  # a record of an earlier try would vouch for this one's scores
            (out / shard.record).unlink(missing_ok=True)
        prep = with_brain_mask(estimator.prep, brain_mask_source)
        writer = _Writer(estimator, out, fpr, batch_size, list(failures or []))
        quiet = estimator.progress
        estimator.progress = False  # one bar over scans, not one per batch
        bar = tqdm(total=len(scans), desc="predicting", unit="scan", disable=not progress)
        complete = False
        try:
            loaded = _load_all(scans, estimator, prep, cache_dir, writer, bar)
            for group in _groups(loaded, batch_size):
                writer.write(group, bar)
            complete = True
        finally:  # the scans written so far are listed even if something unexpected stopped us
            bar.close()
            estimator.progress = quiet
            try:
                _write_scores(writer.rows, out / (shard.scores if shard else "scores.csv"))
            except FaeInputError:
                if complete:  # else the error that stopped us is the one to report
                    raise
        if shard is not None:  # written last: a shard with its record is complete
            record = {
                "shard": shard.index,
                "shards": shard.count,
                "scans": {scan.name: order[scan.name] for scan in scans},
                "failures": writer.failures,
            }
            with atomic_path(out / shard.record) as tmp:
                tmp.write_text(json.dumps(record, indent=1))
        return writer.rows, writer.failures


def merge_shards(folder: Path) -> tuple[list[dict], list[tuple[str, str]]]:
    """Join the shards' ``scores-K.csv`` in ``folder`` into ``scores.csv``, rows in the order of
    the inputs (as one worker writes it); returns the rows and every shard's failures. Every
    shard 1..N must have finished (its ``shard-K.json``), else one line says which is missing."""
    folder = Path(folder)
    records = {}
    for path in sorted(folder.glob("shard-*.json")):
        try:
            saved = json.loads(path.read_text())
            record = {
                "shards": int(saved["shards"]),
                "scans": {str(k): int(v) for k, v in saved["scans"].items()},
                "failures": [(str(a), str(b)) for a, b in saved["failures"]],
            }
            records[int(saved["shard"])] = record
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            problem = f"not a shard record written by fae predict ({err})"
            raise FaeInputError(path, problem) from None
    if not records:
        raise FaeInputError(folder, "holds no finished shards (shard-K.json): nothing to merge")
    counts = {r["shards"] for r in records.values()}
    if len(counts) != 1:
        raise FaeInputError(folder, f"holds shards of different splits (of {sorted(counts)})")
    (count,) = counts
    missing = [k for k in range(1, count + 1) if k not in records]
    if missing:
        which = ", ".join(f"{k}/{count}" for k in missing)
        raise FaeInputError(folder, f"shard(s) {which} not finished: run fae predict --shard")
    rows, failures, order = [], [], {}
    for index in range(1, count + 1):
        record = records[index]
        order.update(record["scans"])
        failures += record["failures"]
        path = folder / Shard(index, count).scores
        try:
            with path.open(newline="") as fh:
                reader = csv.DictReader(fh)
                part = list(reader)
        except OSError as err:
            raise FaeInputError(path, f"cannot read ({err.strerror or err})") from None
        if tuple(reader.fieldnames or ()) != SCORE_COLUMNS:
            raise FaeInputError(path, "not a scores file written by fae predict")
        stray = [row["name"] for row in part if row["name"] not in record["scans"]]
        if stray:
            raise FaeInputError(path, f"lists {stray[0]}, which its shard record does not have")
        rows += part
    rows.sort(key=lambda row: order[row["name"]])
    with folder_lock(folder):
        _write_scores(rows, folder / "scores.csv")
    return rows, failures


def _load_all(
    scans: Sequence[Scan],
    estimator: Predictor,
    prep: PrepConfig,
    cache_dir: Path | None,
    writer: _Writer,
    bar: tqdm,
) -> Iterator[_Loaded]:
    """The scans prepared one by one; an unreadable one is reported, counted and skipped."""
    reference = estimator.meta.get("intensity", {})
    for scan in scans:
        try:
            item = _load(scan, estimator, prep, reference, cache_dir)
        except FaeInputError as err:
            writer.failures.append((str(err.path or scan.image), err.problem))
            tqdm.write(f"fae: error: {err} (skipped)", file=sys.stderr)
            bar.update(1)
            continue
        for warning in item.warnings:
            tqdm.write(f"fae: warning: {scan.image}: {warning}", file=sys.stderr)
        yield item


def _groups(loaded: Iterable[_Loaded], batch_size: int) -> Iterator[list[_Loaded]]:
    """Consecutive scans with at least ``batch_size`` slices together (the last may have
    fewer), so that slices of several small scans share a batch."""
    group: list[_Loaded] = []
    for item in loaded:
        group.append(item)
        if sum(len(g.prepared.images) for g in group) >= batch_size:
            yield group
            group = []
    if group:
        yield group


class _Writer:
    """Maps a group of scans and writes each one's outputs; keeps the rows and failures."""

    def __init__(
        self,
        estimator: Predictor,
        out: Path,
        fpr: float,
        batch_size: int,
        failures: list[tuple[str, str]],
    ) -> None:
        self.estimator, self.out, self.fpr, self.batch_size = estimator, out, fpr, batch_size
        self.pixel_t, self.slice_t = estimator.thresholds(fpr)
        _, self.vmax = estimator.display_range(fpr)
        self.rows: list[dict] = []
        self.failures = failures

    def write(self, group: list[_Loaded], bar: tqdm) -> None:
        images = np.concatenate([g.prepared.images for g in group])
        masks = np.concatenate([g.prepared.masks for g in group])
        volume = np.concatenate([np.full(len(g.prepared.images), k) for k, g in enumerate(group)])
        index = np.concatenate([g.prepared.slice_index for g in group])
        maps = (
            self.estimator.predict(images, masks, self.batch_size, volume, index)
            if len(images)
            else images
        )
        start = 0
        for item in group:
            n = len(item.prepared.images)
            try:
                self.rows.append(self._write_scan(item, maps[start : start + n]))
            except FaeInputError:  # the folder is full or read-only: so it is for every scan
                raise
            except (OSError, ValueError, RuntimeError) as err:  # this scan's outputs only
                self.failures.append((str(item.scan.image), f"cannot write outputs ({err})"))
                tqdm.write(
                    f"fae: error: {item.scan.image}: cannot write outputs ({err})", file=sys.stderr
                )
            start += n
            bar.update(1)

    def _write_scan(self, item: _Loaded, maps: np.ndarray) -> dict:
        """Write the scan's map, brain mask, thresholded mask and overlay (all or none); its row."""
        prepared, volume, name = item.prepared, item.volume, item.scan.name
        out, fpr, pixel_t, slice_t = self.out, self.fpr, self.pixel_t, self.slice_t
        brain = item.brain.mask
        native = np.where(brain, restore_volume(maps, prepared), 0.0).astype(np.float32)
        suspicious = brain & (native >= pixel_t)
        scores = self.estimator.slice_scores(maps, prepared.masks)
        widespread = (
            float(np.mean(maps[prepared.masks] >= pixel_t)) if prepared.masks.any() else 0.0
        )
        if widespread > max(WIDESPREAD_FRACTION, 5 * fpr):
            item.warnings.append(
                f"{widespread:.0%} of the brain is above the threshold (healthy scans: {fpr:.1%}); "
                "the scan may differ from the training data"
            )
            tqdm.write(f"fae: warning: {item.scan.image}: {item.warnings[-1]}", file=sys.stderr)
        row = {
            "name": name,
            "source": str(item.scan.image),
            "scan_score": float(scores.max()),
            "suspicious_voxels": int(suspicious.sum()),
            "suspicious_slices": int((scores >= slice_t).sum()),
            "slices": len(scores),
            "fpr": fpr,
            "pixel_threshold": pixel_t,
            "slice_threshold": slice_t,
            "brain_mask": item.brain.method,
            "brain_ml": round(float(brain.sum()) * voxel_ml(volume.affine), 1)
            if has_geometry(volume)
            else "",
            "warnings": "; ".join(item.warnings),
        }
        outputs = (
            ("anomaly", native, "fae anomaly map"),
            ("brainmask", brain.astype(np.uint8), f"fae brain mask ({item.brain.method})"),
            ("mask", suspicious.astype(np.uint8), f"fae map >= threshold at FPR {fpr:g}"),
        )
        names = [f"{name}_{suffix}.nii.gz" for suffix, _, _ in outputs] + [f"{name}_overlay.png"]
        with atomic_paths([out / n for n in names]) as paths:
            for path, (_, data, description) in zip(paths, outputs, strict=False):
                save_nifti(data, volume.affine, path, derived_header(volume.header, description))
            _save_overlay(item, maps, paths[-1], pixel_t, self.vmax, row)
        return row


def _load(
    scan: Scan, estimator: Predictor, prep: PrepConfig, reference: dict, cache_dir: Path | None
) -> _Loaded:
    volume = scan.image.load()
    given = scan.brainmask.load() if scan.brainmask is not None else None
    brain = brain_mask(
        volume,
        given,
        prep.brain_mask,
        prep.hd_bet_mode,
        prep.hd_bet_tta,
        cache_dir,
        estimator.device,
    )
    prepared = prepare_volume(volume, None, brain, prep)
    if len(prepared.images) == 0:
        raise FaeInputError(scan.image, "no brain found in the scan")
    warnings = []
    trained_on = estimator.meta.get("modality")
    said = scan.modality if scan.modality in KNOWN_MODALITIES else None
    if said and trained_on and said != trained_on:
        warnings.append(f"looks like {scan.modality}, but the run was trained on {trained_on}")
    if (warning := intensity_warning(prepared.intensity, reference)) is not None:
        warnings.append(warning)
    return _Loaded(scan, volume, brain, prepared, warnings)


def _save_overlay(
    item: _Loaded, maps: np.ndarray, path: Path, vmin: float, vmax: float, row: dict
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
        path,
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
