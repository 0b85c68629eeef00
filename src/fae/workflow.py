"""The life of a run, shared by the CLI, the benchmark, the demo and the scripts: train it (or
resume it, or extend it, or see that it is finished), evaluate it on labelled data, recalibrate
its thresholds on healthy scans.

A run folder holds ``config.json`` (method, config, preprocessing and ``meta``: data, modality,
split), ``train_log.csv`` and ``checkpoint.pt`` (with the calibrated thresholds); ``fae
evaluate`` writes ``metrics.json``, ``per_subject.csv``, ``maps.npz`` and a figure of the best
and worst slices; ``fae report`` turns them into one HTML page.
"""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fae import distributed
from fae.calibration import intensity_reference
from fae.data.discover import Dataset, discover
from fae.data.preprocess import PrepConfig, with_brain_mask
from fae.data.slices import SliceSet, prepare_dataset, split_subjects
from fae.device import resolve_device
from fae.errors import FaeInputError
from fae.evaluation import (
    SLICE_MAPS,
    anomaly_kinds,
    best_and_worst_slices,
    evaluate_by_kind,
    evaluate_maps,
    save_slice_maps,
)
from fae.io import atomic_path, folder_lock
from fae.methods.base import AnomalyMethod, load_method
from fae.methods.registry import PROPOSED, method_class
from fae.viz import save_slice_figure


@dataclass(frozen=True)
class RunSpec:
    """What defines a run: its data, modality (``None``: the only one), method and settings
    (which slices it trains on among them), preprocessing, subject split, the run whose weights
    it starts from (``init``: fine-tuning; ``None``: from scratch) and the device it trains on."""

    data: Path
    modality: str | None = None
    method: str = PROPOSED
    params: dict = field(default_factory=dict)
    prep: PrepConfig = field(default_factory=PrepConfig)
    channels: list[str] | None = None
    test_fraction: float = 0.5
    val_fraction: float = 0.1
    split_seed: int = 0
    select_fraction: float = 0.0
    init: Path | None = None
    device: str = "auto"

    @classmethod
    def of_run(cls, run: Path, device: str = "auto") -> RunSpec:
        """The spec the run in ``run`` was trained with."""
        est = load_method(run, progress=False)
        meta = est.meta
        if "split" not in meta:
            raise FaeInputError(run, "was not trained from a dataset by fae train")
        return cls(
            data=Path(meta["data"]),
            modality=meta["modality"],
            method=est.name,
            params=est.config.to_dict(),
            prep=est.prep,
            channels=meta["channels"],
            test_fraction=_saved_split(meta)["test_fraction"],
            val_fraction=_saved_split(meta)["val_fraction"],
            split_seed=_saved_split(meta)["seed"],
            select_fraction=_saved_split(meta)["select_fraction"],
            init=Path(meta["init"]) if meta.get("init") else None,
            device=device,
        )

    def split(self) -> dict:
        return {
            "test_fraction": self.test_fraction,
            "val_fraction": self.val_fraction,
            "seed": self.split_seed,
            "select_fraction": self.select_fraction,
        }


def train_or_resume(
    spec: RunSpec,
    out: Path,
    cache_dir: Path | None = None,
    progress: bool = True,
    announce: Callable[[str], None] | None = None,
) -> AnomalyMethod:
    """The trained run of ``spec`` in ``out``: trained afresh, or continued where it stopped
    (exactly), or extended to ``spec.params["steps"]`` if that is more than it has, or loaded
    when it is finished. A run folder with other settings is an error. ``announce`` hears what
    is about to happen, when anything is. Holds ``out``'s lock (:func:`fae.io.folder_lock`)
    while it works. Under ``torchrun`` every rank calls this (:mod:`fae.distributed`): rank 0
    holds the lock, prepares the data first, prints and writes the run."""
    resolve_device(spec.device)  # a missing GPU is an error even for a finished run
    say = announce if announce is not None and distributed.is_main() else lambda _: None
    progress = progress and distributed.is_main()
    with folder_lock(out) if distributed.is_main() else nullcontext():
        return _train_or_resume(spec, out, cache_dir, progress, say)


def _train_or_resume(
    spec: RunSpec,
    out: Path,
    cache_dir: Path | None,
    progress: bool,
    say: Callable[[str], None],
) -> AnomalyMethod:
    if (out / "checkpoint.pt").exists():
        est = load_method(out, device=spec.device, progress=progress)
        _check_same_run(est, spec, out)
        steps = spec.params.get("steps")
        if steps is not None and steps != est.config.steps:
            est.extend(steps)
        if est.is_finished:
            return est
        say(f"continuing {out} from step {est.step_} to {est.config.steps}")
        dataset = discover(Path(est.meta["data"]), est.meta["channels"])
        train, val = _training_slices(dataset, est, cache_dir, progress)
        return est.continue_fit(train, val, run_dir=out)
    est = method_class(spec.method)(
        prep=spec.prep, device=spec.device, progress=progress, **spec.params
    )
    if spec.init is None:  # fail fast (e.g. missing ImageNet weights) before preparing data
        est.preflight()
    say(f"training {spec.method} into {out}")
    dataset = discover(spec.data, spec.channels)
    modality = dataset.pick_modality(spec.modality)
    splits = split_subjects(
        dataset, spec.test_fraction, spec.val_fraction, spec.split_seed, spec.select_fraction
    )
    if not splits["train"]:
        raise FaeInputError(spec.data, "no training subjects after the split")
    est.meta = {
        "data": str(Path(spec.data).resolve()),
        "modality": modality,
        "channels": spec.channels,
        "split": spec.split(),
        "splits": splits,
        "init": str(Path(spec.init).resolve()) if spec.init else None,
    }
    train, val = _training_slices(dataset, est, cache_dir, progress)
    init = load_method(spec.init, spec.device, progress=False) if spec.init else None
    return est.fit(train, val, run_dir=out, init=init)


def _check_same_run(est: AnomalyMethod, spec: RunSpec, out: Path) -> None:
    """The run in ``out`` must be the one ``spec`` describes (its step budget may differ)."""
    meta = est.meta

    def differs(what: str) -> FaeInputError:
        return FaeInputError(out, f"holds a run {what}: use another --out")

    if "split" not in meta:
        raise differs("that fae train did not make")
    if est.name != spec.method:
        raise differs(f"of {est.name}, not {spec.method}")
    saved = est.config.to_dict()
    for key, value in spec.params.items():
        if key != "steps" and _plain(saved.get(key)) != _plain(value):
            raise differs(f"with {key}={saved.get(key)!r}, not {value!r}")
    if est.prep.to_dict() != spec.prep.to_dict():
        raise differs("with other preprocessing")
    if Path(meta["data"]) != Path(spec.data).resolve():
        raise differs(f"on {meta['data']}, not {Path(spec.data).resolve()}")
    if spec.modality is not None and meta["modality"] != spec.modality:
        raise differs(f"on {meta['modality']}, not {spec.modality}")
    if _plain(meta["channels"]) != _plain(spec.channels):
        raise differs(f"with channels {meta['channels']}, not {spec.channels}")
    if _saved_split(meta) != spec.split():
        raise differs("with another subject split")
    init = str(Path(spec.init).resolve()) if spec.init else None
    if meta.get("init") != init:
        raise differs(f"started from {meta.get('init') or 'scratch'}, not {init or 'scratch'}")


def _saved_split(meta: dict) -> dict:
    """A run's split settings (runs from before selection patients existed had none)."""
    return {"select_fraction": 0.0, **meta["split"]}


def _plain(value: object) -> object:
    """A setting as JSON keeps it (tuples become lists), for comparing saved and asked."""
    return json.loads(json.dumps(value))


def _training_slices(
    dataset: Dataset, estimator: AnomalyMethod, cache_dir: Path | None, progress: bool
) -> tuple[SliceSet, SliceSet]:
    """The run's training slices (those its ``train_slices`` setting asks for) and validation
    slices (whole scans: fit takes their lesion-free slices), prepared in one read per scan;
    sets the intensity reference (the training scans' raw intensity range, for prediction's
    warnings) and the brain-mask sources in ``estimator.meta``."""
    meta = estimator.meta
    with distributed.main_first():
        train, val = (
            prepare_dataset(
                dataset,
                meta["modality"],
                estimator.prep,
                cache_dir,
                meta["splits"][part],
                progress,
                estimator.device,
            )
            for part in ("train", "val")
        )
    meta["intensity"] = intensity_reference(train.intensity)
    meta["brain_masks"] = dict(Counter(train.mask_methods + val.mask_methods))
    prepared = len(train)
    if estimator.config.train_slices == "lesion-free":
        train = train.lesion_free()
    if len(train) == 0:
        why = (
            f"all {prepared} of their brain slices have lesions (training uses lesion-free "
            "slices; --train-slices masked uses every slice)"
            if prepared
            else "no brain slices in any of them"
        )
        n = len(meta["splits"]["train"])
        subjects = f"{n} training subject{'s' if n != 1 else ''}"
        raise FaeInputError(dataset.root, f"no usable training slices in the {subjects}: {why}")
    return train, val  # fit takes its lesion-free slices, for the loss and the thresholds


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

    ``subjects``: ``"test"`` (the run's report patients), ``"select"`` (its selection patients,
    for choosing settings), ``"all"``, or ``"auto"`` (the run's test split when ``data`` is the
    data it was trained on, else every subject). ``brain_mask``
    replaces the run's brain-mask source, ``precision`` the arithmetic of its maps (``None``:
    the run's). Writes ``metrics.json``, ``per_subject.csv``, ``maps.npz`` (the slices and maps,
    for ``fae report``) and ``slices.png`` into ``out``.
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
    scores = estimator.slice_scores(maps, slices.masks)
    summary, per_subject = evaluate_maps(slices, maps, scores)
    kinds = anomaly_kinds(dataset.root)
    if kinds:  # synthetic data: the same metrics per anomaly kind
        by_kind = evaluate_by_kind(slices, maps, kinds, scores)
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
    _write_evaluation(summary, per_subject, out)
    save_slice_maps(out / SLICE_MAPS, slices, maps)
    title = f"{run.name}: best and worst slices"
    save_best_and_worst(
        slices, maps, summary["threshold_at_fpr"], out / "slices.png", title,
        estimator.display_range(),
    )  # fmt: skip
    return summary


def _write_evaluation(summary: dict, per_subject: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    with atomic_path(out / "per_subject.csv") as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(per_subject[0]))
        writer.writeheader()
        writer.writerows(per_subject)


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
    ``"all"``, or ``"val"`` for the run's own validation subjects. ``brain_mask`` replaces the
    run's brain-mask source for these scans (``None``: the run's). Maps are made in the run's
    precision, the one its predictions use. The run is rewritten atomically, everything else
    in it kept; ``calibration.json`` is written beside.
    """
    run_dir = run if run.is_dir() else run.parent
    estimator = load_method(run, device=device, progress=progress)
    dataset = discover(data, estimator.meta.get("channels"))
    modality = dataset.pick_modality(estimator.meta.get("modality"), strict=False)
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
    if not slices.lesion_free().masks.any():
        raise FaeInputError(data, "no healthy brain slices to calibrate on")
    calibration = estimator.calibrate(slices, str(Path(data).resolve()))
    estimator.meta["intensity"] = reference
    if run.is_dir():
        estimator.save_run(run)
    else:  # a checkpoint file on its own
        estimator.save(run, training_state=True)
    with atomic_path(run_dir / "calibration.json") as tmp:
        tmp.write_text(json.dumps({**calibration, "intensity": reference}, indent=2))
    return calibration


def save_best_and_worst(
    slices: SliceSet,
    maps: np.ndarray,
    threshold: float,
    path: Path,
    title: str,
    scale: tuple[float, float],
) -> Path:
    """A figure of the 3 best and 3 worst lesion slices (Dice at ``threshold``), the maps on
    the run's colour ``scale`` (:meth:`AnomalyMethod.display_range`)."""
    best, worst = best_and_worst_slices(slices, maps, threshold)
    rows = np.concatenate([best, worst])
    names = [f"best {i + 1}" for i in range(len(best))] + [
        f"worst {i + 1}" for i in range(len(worst))
    ]
    labels = [
        f"{name}\n{slices.subject_ids[slices.subject[r]]}\nz={slices.slice_index[r]}"
        for name, r in zip(names, rows, strict=True)
    ]
    return save_slice_figure(
        slices.images[rows], slices.segs[rows], maps[rows], path, *scale, labels, title
    )


def _evaluation_subjects(dataset: Dataset, meta: dict, subjects: str, data: Path) -> list[str]:
    ids = [s.id for s in dataset.subjects]
    same_data = Path(meta.get("data", "")) == Path(data).resolve()
    if subjects == "all" or (subjects == "auto" and not same_data):
        return ids
    if subjects not in ("test", "select", "auto"):
        raise FaeInputError(None, f"--subjects must be test, select, all or auto, got {subjects!r}")
    part = "select" if subjects == "select" else "test"
    chosen = [s for s in meta.get("splits", {}).get(part, []) if s in set(ids)]
    if not chosen:
        raise FaeInputError(
            data, f"none of the run's {part} subjects are in this dataset: use --subjects all"
        )
    return chosen
