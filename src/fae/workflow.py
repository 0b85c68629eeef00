"""The command-line jobs as functions: train a run folder, evaluate it on labelled data,
recalibrate its thresholds on healthy scans.

A run folder holds ``config.json`` (model, preprocessing, data, modality and the subject split),
``train_log.csv`` and ``checkpoint.pt`` (with the calibrated thresholds); ``fae evaluate`` writes
``metrics.json``, ``per_subject.csv`` and a figure of the best and worst slices.
"""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from fae.calibration import intensity_reference
from fae.checkpoint import load_checkpoint, save_checkpoint
from fae.data.discover import Dataset, discover
from fae.data.preprocess import PrepConfig, with_brain_mask
from fae.data.slices import SliceSet, prepare_dataset, split_subjects
from fae.device import resolve_device
from fae.errors import FaeInputError
from fae.evaluation import anomaly_kinds, best_and_worst_slices, evaluate_by_kind
from fae.io import atomic_path
from fae.methods.base import AnomalyMethod, load_method
from fae.methods.registry import method_class
from fae.viz import save_slice_figure


def train_run(
    data: Path,
    out: Path,
    modality: str,
    params: dict,
    prep: PrepConfig = PrepConfig(),
    channels: list[str] | None = None,
    test_fraction: float = 0.5,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    lesion_free_only: bool = True,
    cache_dir: Path | None = None,
    device: str = "auto",
    progress: bool = True,
    method: str = "fae",
) -> AnomalyMethod:
    """Train ``method`` (default: the Feature-Autoencoder) on the healthy slices of ``data``'s
    training subjects."""
    if (out / "checkpoint.pt").exists():
        raise FaeInputError(
            out, "already holds a run: resume it with --resume, or choose a new --out"
        )
    estimator = method_class(method)(prep=prep, device=device, progress=progress, **params)
    estimator.preflight()  # fail fast (e.g. missing ImageNet weights) before preparing data
    dataset = discover(data, channels)
    dataset.require_modality(modality)
    splits = split_subjects(dataset, test_fraction, val_fraction, split_seed)
    if not splits["train"]:
        raise FaeInputError(data, "no training subjects after the split")
    estimator.meta = {
        "data": str(Path(data).resolve()),
        "modality": modality,
        "channels": channels,
        "lesion_free_only": lesion_free_only,
        "splits": splits,
    }
    train, val = _training_slices(dataset, estimator, cache_dir, progress)
    return estimator.fit(train, val, run_dir=out)


def resume_run(
    run: Path, cache_dir: Path | None = None, progress: bool = True, device: str = "auto"
) -> AnomalyMethod:
    """Continue the interrupted run in ``run`` with the data and split it was started with."""
    estimator = load_method(run, device=device, progress=progress)
    dataset = discover(Path(estimator.meta["data"]), estimator.meta.get("channels"))
    train, val = _training_slices(dataset, estimator, cache_dir, progress)
    return type(estimator).resume(run, train, val, progress=progress, device=device)


def evaluate_run(
    run: Path,
    data: Path,
    out: Path,
    subjects: str = "auto",
    cache_dir: Path | None = None,
    device: str = "auto",
    progress: bool = True,
    brain_mask: str | None = None,
    precision: str | None = None,
) -> dict:
    """Evaluate a trained run on the labelled subjects of ``data``; returns the summary.

    ``subjects``: ``"test"`` (the run's test split), ``"all"``, or ``"auto"`` (the run's test
    split when ``data`` is the data it was trained on, else every subject). ``brain_mask``
    replaces the run's brain-mask source, ``precision`` the arithmetic of its maps (``None``:
    the run's).
    """
    estimator = load_method(run, device=device, progress=progress, precision=precision)
    meta = estimator.meta
    dataset = discover(data, meta.get("channels"))
    ids = _evaluation_subjects(dataset, meta, subjects, data)
    prep = with_brain_mask(estimator.prep, brain_mask)
    slices = prepare_dataset(dataset, meta["modality"], prep, cache_dir, ids, progress, device)
    if not slices.segs.any():
        raise FaeInputError(data, "the evaluated subjects have no lesion voxels to score against")
    started = time.perf_counter()
    maps = estimator.predict(slices)
    seconds = time.perf_counter() - started
    summary, per_subject = estimator.evaluate(slices, maps)
    kinds = anomaly_kinds(dataset.root)
    if kinds:  # synthetic data: the same metrics per anomaly kind
        by_kind = evaluate_by_kind(slices, maps, kinds, estimator.slice_scores(maps, slices.masks))
        summary["by_kind"] = {
            k: {m: v for m, v in d.items() if m != "pr_curve"}
            for k, d in by_kind.items()
            if k != "all"
        }
    summary.update(
        run=str(run),
        data=str(data),
        subjects=ids,
        steps=estimator.step_,
        precision=estimator.map_precision(resolve_device(device)),
        predict_seconds=seconds,
        slices_per_second=len(slices) / max(seconds, 1e-9),
    )
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    with atomic_path(out / "per_subject.csv") as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(per_subject[0]))
        writer.writeheader()
        writer.writerows(per_subject)
    save_best_and_worst(
        slices,
        maps,
        summary["threshold_at_fpr"],
        out / "slices.png",
        f"{run.name}: best and worst slices",
    )
    return summary


def calibrate_run(
    run: Path,
    data: Path,
    cache_dir: Path | None = None,
    device: str = "auto",
    progress: bool = True,
    subjects: str = "all",
    brain_mask: str | None = None,
) -> dict:
    """Recompute a run's thresholds (and intensity reference) on the healthy scans in ``data``.

    Slices with lesion voxels (where ``data`` has segmentations) are left out. ``subjects``:
    ``"all"``, or ``"val"`` for the run's own validation subjects (e.g. to calibrate a run
    trained before calibration existed). ``brain_mask`` replaces the run's brain-mask source for
    these scans (``None``: the run's). Maps are made in the run's precision, the one its
    predictions use. The checkpoint is rewritten atomically, everything else in it kept;
    ``calibration.json`` is written beside.
    """
    path = run / "checkpoint.pt" if run.is_dir() else run
    estimator = load_method(path, device=device, progress=progress)
    modality = estimator.meta.get("modality")
    dataset = discover(data, estimator.meta.get("channels"))
    if modality not in dataset.modalities:
        modality = _single_modality(dataset, modality)
    ids = [s.id for s in dataset.subjects]
    if subjects == "val":
        wanted = set(estimator.meta.get("splits", {}).get("val", []))
        ids = [i for i in ids if i in wanted]
        if not ids:
            raise FaeInputError(data, "none of the run's validation subjects are in this dataset")
    elif subjects != "all":
        raise FaeInputError(None, f"--subjects must be all or val, got {subjects!r}")
    prep = with_brain_mask(estimator.prep, brain_mask)
    slices = prepare_dataset(dataset, modality, prep, cache_dir, ids, progress, device)
    reference = intensity_reference(slices.intensity)
    slices = slices.lesion_free()
    if not slices.masks.any():
        raise FaeInputError(data, "no healthy brain slices to calibrate on")
    calibration = estimator.calibrate(slices, str(Path(data).resolve()))
    payload = load_checkpoint(path)
    payload["calibration"] = calibration
    payload["meta"] = {**payload.get("meta", {}), "intensity": reference}
    for key in ("format", "versions"):
        payload.pop(key, None)
    save_checkpoint(payload, path)
    with atomic_path(path.parent / "calibration.json") as tmp:
        tmp.write_text(json.dumps({**calibration, "intensity": reference}, indent=2))
    return calibration


def save_best_and_worst(
    slices: SliceSet, maps: np.ndarray, threshold: float, path: Path, title: str
) -> Path:
    """A figure of the 3 best and 3 worst lesion slices (Dice at ``threshold``), one scale."""
    best, worst = best_and_worst_slices(slices, maps, threshold)
    rows = np.concatenate([best, worst])
    names = [f"best {i + 1}" for i in range(len(best))] + [
        f"worst {i + 1}" for i in range(len(worst))
    ]
    labels = [
        f"{name}\n{slices.subject_ids[slices.subject[r]]}\nz={slices.slice_index[r]}"
        for name, r in zip(names, rows, strict=True)
    ]
    vmax = float(np.quantile(maps[slices.masks], 0.999)) if slices.masks.any() else 1.0
    return save_slice_figure(
        slices.images[rows], slices.segs[rows], maps[rows], path, labels, title, vmax
    )


def _training_slices(
    dataset: Dataset, estimator: AnomalyMethod, cache_dir: Path | None, progress: bool
) -> tuple[SliceSet, SliceSet]:
    """The run's training and validation slices; sets the intensity reference (the training
    scans' raw intensity range, for prediction's warnings) in ``estimator.meta``."""
    meta = estimator.meta
    splits = meta["splits"]
    train, val = (
        prepare_dataset(
            dataset,
            meta["modality"],
            estimator.prep,
            cache_dir,
            splits[part],
            progress,
            estimator.device,
        )
        for part in ("train", "val")
    )
    meta["intensity"] = intensity_reference(train.intensity)
    meta["brain_masks"] = dict(Counter(train.mask_methods + val.mask_methods))
    if meta["lesion_free_only"]:
        train, val = train.lesion_free(), val.lesion_free()
    return train, val


def _single_modality(dataset: Dataset, wanted: str | None) -> str:
    if len(dataset.modalities) == 1:
        return dataset.modalities[0]
    raise FaeInputError(
        dataset.root, f"has no {wanted} images (has {', '.join(dataset.modalities)})"
    )


def _evaluation_subjects(dataset: Dataset, meta: dict, subjects: str, data: Path) -> list[str]:
    ids = [s.id for s in dataset.subjects]
    same_data = Path(meta.get("data", "")) == Path(data).resolve()
    if subjects == "all" or (subjects == "auto" and not same_data):
        return ids
    if subjects not in ("test", "auto"):
        raise FaeInputError(None, f"--subjects must be test, all or auto, got {subjects!r}")
    test = [s for s in meta.get("splits", {}).get("test", []) if s in set(ids)]
    if not test:
        raise FaeInputError(
            data, "none of the run's test subjects are in this dataset: use --subjects all"
        )
    return test
