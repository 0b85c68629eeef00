"""Map levers that need no retraining, one at a time, on the selection patients.

For the FAE runs of ``benchmarks/protocol.py`` (``OUT/lgg-<modality>/runs/fae/seed*``, at
whatever step they hold), each lever is applied on its own to the run's maps of its selection
patients and scored; mean ± std over the seeds. Levers are chosen there; ``--subjects test``
then scores the same levers on the report patients, to report what was chosen:

- ``fusion``: the intensity evidence fused in (``fusion = "intensity"``, fitted on the run's
  healthy validation slices): intensity surprisal × P_healthy(structure < u);
- ``fusion-sum``: the first fusion, the sum of both healthy surprisals (dropped);
- ``product``: the untuned product of FAE's map and the slice's intensity (nothing fitted; the
  first fusion tried in issue 13);
- ``flip``: test-time augmentation, the mean of the map and the mirrored map of the mirrored
  slice;
- ``median3``: a median over each slice and its two neighbours in the volume
  (``slice_median = 3``, :mod:`fae.postprocess`); ``fusion-median3``: both;
- ``center10``, ``center25``: each scan's map minus the 10 % or 25 % quantile of its own values
  inside the brain (``volume_center``, :mod:`fae.postprocess`), alone, with the median
  (``center25-median3``), and on the fused map (``fusion-center25``,
  ``fusion-center25-median3``);
- ``scale25``: centred on the 25 % quantile and divided by the scan's own spread, the 75 % minus
  the 25 % quantile inside the brain, so that a scan whose map is noisy throughout counts for
  less (alone and with the median, ``scale25-median3``);
- ``center25-dark``, ``center25-dark-median3``: the centred map times how dark each pixel is
  for healthy tissue (``dark_weight``: P_healthy(brighter), 0.5 to 1, fitted on the run's
  healthy validation slices), without and with the median;
- ``center25-<weight>-median<n>``: the last with one change or two, to the weight
  (``dark2``, ``dark4``: squared, to the 4th power; ``darkonly``: rescaled to 0..1;
  ``darksmooth[2|3]``: from the slice smoothed in-plane inside the brain by a Gaussian of 1
  [2, 3] pixels, the healthy tail unsmoothed; ``darkblur[2]``: itself smoothed so;
  ``dark-smooth<n>``: FAE's ``dark_smooth`` of n pixels, the healthy tail fitted on healthy
  slices smoothed alike) and to the median (over 3, 5 or 7 slices);
- ``erode2``: the map set to 0 on the outer 2 pixels of the brain mask (where skull-stripping
  errors sit), metrics still over the whole mask;
- ``components``: at the run's 5 %-FPR healthy threshold, connected regions (3D) smaller than 20
  voxels set to 0;
- ``ensemble``: the mean map over the seeds (one value);
- ``threshold``, ``threshold-median3`` and ``threshold-center25-median3``: the image intensity,
  alone, with the median, and centred per scan with the median; ``threshold-dark``: the
  negated intensity (dark is suspicious); ``threshold-darksmooth2-median5``: the negated
  intensity smoothed in-plane inside the brain (2 pixels) with the median over 5 slices.

The table goes to ``RESULTS/lgg-<modality>/levers[-test].md`` and ``.json`` (``--results``,
default ``benchmarks/results/<name of --out>``, kept in the repository).

    .venv/bin/python benchmarks/levers.py --modality flair --out benchmark-output/protocol
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from fae.benchmark import mean_std
from fae.data.cache import default_cache_dir
from fae.data.discover import discover
from fae.data.slices import SliceSet, prepare_dataset
from fae.evaluation import evaluate_maps, slice_scores
from fae.io import atomic_path
from fae.methods.base import load_method
from fae.postprocess import center_volumes, median_across_slices, smooth_inside

KEYS = ("pixel_ap", "dice_at_fpr", "best_dice", "slice_auroc")
RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modality", choices=["t1", "flair"], required=True)
    parser.add_argument("--out", type=Path, required=True, help="protocol.py's --out")
    parser.add_argument("--seeds", type=int, help="only seeds 0..N-1 (default: every run)")
    parser.add_argument("--subjects", choices=["select", "test"], default="select")
    parser.add_argument("--results", type=Path, help="default: benchmarks/results/<out's name>")
    args = parser.parse_args()
    results = (args.results or RESULTS / args.out.name) / f"lgg-{args.modality}"
    folder = args.out / f"lgg-{args.modality}"
    runs = sorted((folder / "runs" / "fae").glob("seed*"), key=lambda p: int(p.name[4:]))
    runs = runs[: args.seeds] if args.seeds else runs
    cache = default_cache_dir()
    scores: dict[str, list[dict]] = {}
    maps_by_seed, steps = [], []
    for run in runs:
        est = load_method(run, progress=False)
        steps.append(est.step_)
        dataset = discover(est.meta["data"])
        patients = prepare_dataset(
            dataset, args.modality, est.prep, cache, est.meta["splits"][args.subjects], False
        )
        val = prepare_dataset(dataset, args.modality, est.prep, cache, est.meta["splits"]["val"])
        for name, maps in _levers(est, patients, val).items():
            scores.setdefault(name, []).append(_score(patients, maps, est.config.slice_score))
        maps_by_seed.append(est.predict(patients))
    kind = est.config.slice_score if runs else "top10"
    ensemble = [_score(patients, np.mean(maps_by_seed, axis=0), kind)] if runs else []
    table = {name: _summary(rows) for name, rows in {**scores, "ensemble": ensemble}.items()}
    intensity = np.where(patients.masks, patients.images, 0)
    table["threshold"] = _summary([_score(patients, intensity)])
    table["threshold-median3"] = _summary([_score(patients, _median3(patients, intensity))])
    centred = _median3(patients, _center(patients, intensity, 0.25))
    table["threshold-center25-median3"] = _summary([_score(patients, centred)])
    table["threshold-dark"] = _summary([_score(patients, np.where(patients.masks, -intensity, 0))])
    dark_smooth = -smooth_inside(patients.images, patients.masks, 2)
    table["threshold-darksmooth2-median5"] = _summary(
        [_score(patients, _median(patients, np.where(patients.masks, dark_smooth, 0), 5))]
    )
    result = {
        "modality": args.modality,
        "subjects": args.subjects,
        "seeds": len(runs),
        "steps": steps,
        "levers": table,
    }
    name = "levers" if args.subjects == "select" else f"levers-{args.subjects}"
    save_result(results, name, result, _markdown(result))


def save_result(folder: Path, name: str, result: dict, table: str) -> None:
    """``result`` as ``folder/name.json`` and its markdown ``table`` as ``name.md`` (each
    written whole or not at all), and the table printed."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    with atomic_path(folder / f"{name}.md") as tmp:
        tmp.write_text(table)
    print(table)


def _levers(est, patients: SliceSet, healthy: SliceSet) -> dict[str, np.ndarray]:
    base = est.predict(patients)
    flipped = est.predict(patients.images[:, :, ::-1].copy(), patients.masks[:, :, ::-1].copy())
    levers = {
        "base": base,
        **_fusions(est, healthy, patients, base),
        "product": np.where(patients.masks, base * patients.images, 0),
        "flip": np.where(patients.masks, (base + flipped[:, :, ::-1]) / 2, 0),
        "median3": _median3(patients, base),
        "erode2": np.where(_eroded(patients.masks, 2), base, 0),
    }
    levers["fusion-median3"] = _median3(patients, levers["fusion"])
    for q in (10, 25):
        levers[f"center{q}"] = _center(patients, base, q / 100)
    levers["center25-median3"] = _median3(patients, levers["center25"])
    dark = est.with_maps(healthy, volume_center=0.25, dark_weight=True)
    levers["center25-dark"] = dark.predict(patients)
    levers["center25-dark-median3"] = _median3(patients, levers["center25-dark"])
    levers.update(_dark_variants(dark, patients, healthy, levers["center25"]))
    levers["scale25"] = _per_volume(patients, base, _scaled)
    levers["scale25-median3"] = _median3(patients, levers["scale25"])
    levers["fusion-center25"] = _center(patients, levers["fusion"], 0.25)
    levers["fusion-center25-median3"] = _median3(patients, levers["fusion-center25"])
    threshold, _ = est.thresholds(0.05)
    levers["components"] = _per_volume(patients, base, lambda v, _: _drop_small(v, threshold, 20))
    return {k: np.asarray(v, np.float32) for k, v in levers.items()}


def _dark_variants(
    dark, patients: SliceSet, healthy: SliceSet, centred: np.ndarray
) -> dict[str, np.ndarray]:
    """Variants of ``center25-dark-median3`` (the ``best`` map on T1), each one change: the
    weight squared or to the 4th power (0.25 or 0.06 to 1: darkness counts for more), rescaled
    to 0..1 (``darkonly``: tissue brighter than the healthy median counts for nothing), taken
    from the slice smoothed in-plane inside the brain (``darksmooth``, ``darksmooth2``,
    ``darksmooth3``: a Gaussian of 1, 2 or 3 pixels, so that single dark pixels weigh less than
    dark regions, the healthy tail fitted on unsmoothed slices), or itself smoothed so
    (``darkblur``, ``darkblur2``); the median over 5 or 7 slices; the smoothings with those
    medians; and FAE's ``dark_smooth`` of 2, 3, 4, 6 or 8 pixels (``dark-smooth<n>``: the healthy
    tail fitted on the healthy slices smoothed alike) with the median over 5."""
    masks = patients.masks
    weight = dark.map_weight(patients.images, masks)
    smooth1, smooth2, smooth3 = (smooth_inside(patients.images, masks, s) for s in (1, 2, 3))
    weights = {  # name → (weight, the medians it is tried with)
        "dark": (weight, (5, 7)),
        "dark2": (weight**2, (3,)),
        "dark4": (weight**4, (3,)),
        "darkonly": (2 * weight - 1, (3,)),
        "darksmooth": (dark.map_weight(smooth1, masks), (3, 5)),
        "darksmooth2": (dark.map_weight(smooth2, masks), (3, 5, 7)),
        "darksmooth3": (dark.map_weight(smooth3, masks), (5, 7)),
        "darkblur": (smooth_inside(weight, masks, 1), (3, 5)),
        "darkblur2": (smooth_inside(weight, masks, 2), (3,)),
    }
    out = {
        f"center25-{name}-median{n}": _median(patients, np.where(masks, centred * w, 0), n)
        for name, (w, medians) in weights.items()
        for n in medians
    }
    for sigma in (2, 3, 4, 6, 8):  # dark_smooth: the healthy tail fitted on smoothed slices too
        smoothed = dark.with_maps(healthy, dark_smooth=sigma, slice_median=5)
        out[f"center25-dark-smooth{sigma}-median5"] = smoothed.predict(patients)
    return out


def _fusions(
    est, healthy: SliceSet, patients: SliceSet, structure: np.ndarray
) -> dict[str, np.ndarray]:
    """The kept fusion (the model's own) and the dropped sum of both surprisals, from the
    run's structural maps of ``patients``."""
    fused = est.with_maps(healthy, fusion="intensity")
    model = fused.model_
    surprisals = model.structure_tail(torch.from_numpy(structure)) + model.intensity_tail(
        torch.from_numpy(np.asarray(patients.images, np.float32))
    )
    return {
        "fusion": fused.predict(patients),
        "fusion-sum": np.where(patients.masks, surprisals.numpy(), 0),
    }


def _median3(slices: SliceSet, maps: np.ndarray) -> np.ndarray:
    """The median over each slice and its two neighbours (``slice_median = 3``)."""
    return _median(slices, maps, 3)


def _median(slices: SliceSet, maps: np.ndarray, n: int) -> np.ndarray:
    """The median over each slice and its neighbours, ``n`` slices in all (``slice_median``)."""
    return median_across_slices(maps, slices.masks, n, slices.subject, slices.slice_index)


def _center(slices: SliceSet, maps: np.ndarray, quantile: float) -> np.ndarray:
    """Each scan's map minus its ``quantile`` inside the brain (``volume_center``)."""
    return center_volumes(maps, slices.masks, quantile, slices.subject)


def _scaled(volume: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """One scan's map minus its 25 % quantile inside ``brain``, over its 25–75 % spread."""
    low, high = np.quantile(volume[brain], [0.25, 0.75]) if brain.any() else (0.0, 1.0)
    return (volume - low) / max(high - low, 1e-12)


def _per_volume(slices: SliceSet, maps: np.ndarray, fn) -> np.ndarray:
    """``fn(maps, masks)`` on each subject's maps and brain masks stacked in slice order
    (N_s, S, S); 0 outside the brain."""
    out = np.array(maps, copy=True)
    for i in range(len(slices.subject_ids)):
        rows = np.flatnonzero(slices.subject == i)
        rows = rows[np.argsort(slices.slice_index[rows])]
        out[rows] = fn(maps[rows], slices.masks[rows])
    return np.where(slices.masks, out, 0)


def _eroded(masks: np.ndarray, pixels: int) -> np.ndarray:
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)  # in-plane only
    return ndimage.binary_erosion(masks, structure, iterations=pixels)


def _drop_small(volume: np.ndarray, threshold: float, voxels: int) -> np.ndarray:
    labels, n = ndimage.label(volume >= threshold)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    small = np.isin(labels, np.flatnonzero(sizes < voxels) + 1)
    return np.where(small, 0, volume)


def _score(slices: SliceSet, maps: np.ndarray, kind: str = "top10") -> dict:
    maps = np.asarray(maps, np.float32)
    summary, _ = evaluate_maps(slices, maps, slice_scores(maps, slices.masks, kind))
    return {k: summary[k] for k in KEYS}


def _summary(rows: list[dict]) -> dict:
    return {k: mean_std([r[k] for r in rows]) for k in (rows[0] if rows else ())}


def _markdown(result: dict) -> str:
    lines = [
        f"LGG {result['modality']}, {result['subjects']} patients, {result['seeds']} seeds at "
        f"steps {result['steps']}:",
        "",
        "| map | pixel AP | Dice@5%FPR | best Dice | slice AUROC |",
        "|---|---|---|---|---|",
    ]
    for name, row in result["levers"].items():
        cells = [f"{row[k]['mean']:.3f} ± {row[k]['std']:.3f}" for k in KEYS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
