"""Slice scores, one at a time, on the selection patients: which map and which aggregation make
the slice AUROC.

The paper scores a slice by the mean of the top 10 % of its map values inside the brain. On T1,
``best`` weights the centred map by darkness, which helps the pixel metrics and lowers the
slice AUROC of the report patients (0.81 → 0.76 at 2,000 steps). For the FAE runs of
``benchmarks/protocol.py`` (``OUT/lgg-<modality>/runs/fae/seed*``, at whatever step they
hold), this scores each slice of the selection patients (``--subjects test``: the report
patients, to report what was chosen) with:

- the map: ``dark`` (``best`` on T1: centred, times darkness, median over 3 slices) or
  ``centred`` (the same without the darkness weight): the pixel metrics stay those of ``dark``,
  only the slice score changes;
- the aggregation: the mean of the top ``q`` % of the slice's map values inside the brain
  (``top10`` is the paper's; ``max`` the 2023 benchmark's), or ``excess<f>``: how much of the
  map lies above the run's healthy pixel threshold at false-positive rate ``f`` (the sum of
  ``max(map - t, 0)`` over the brain: area and strength of what stands out, not its peak).

Each run's structural map is computed once; the maps are those of ``protocol.py``'s
``fae+dark+center25+median3`` rows (refitted and calibrated on the run's healthy validation
slices), so its ``dark / top10`` row repeats their slice AUROC. Mean ± std over the seeds, and
of each row's difference from ``dark / top10`` on the same seed (the runs may be at different
steps: the table says which). A second table says where the weight moves lesion slices: they
are grouped by how dark their lesion is for healthy tissue (the mean weight over the lesion),
and each group's slice AUROC against every lesion-free slice is given on both maps. A third says
which lesion-free slices outscore lesion slices: grouped by their distance to the patient's
nearest lesion slice, with the slice AUROC when the closest are left out; a last one whether
the AUROC is lost to a few patients or to all. The tables go to
``RESULTS/lgg-<modality>/slice-scores[-test].md`` and ``.json``.

    .venv/bin/python benchmarks/slice_scores.py --modality t1 --out benchmark-output/protocol \
        --seeds 1,2,3,4

(``--seeds``: only those runs, e.g. to leave out one being trained on: the script reads each run
at whatever step its checkpoint holds.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fae.benchmark import mean_std
from fae.data.cache import default_cache_dir
from fae.data.discover import discover
from fae.data.slices import SliceSet, prepare_dataset
from fae.evaluation import top_fraction
from fae.methods.base import AnomalyMethod, load_method
from fae.methods.registry import PROPOSED, method_class
from fae.metrics import slice_metrics
from fae.postprocess import finish_maps
from levers import save_result
from protocol import _seed_list

RESULTS = Path(__file__).parent / "results"
FRACTIONS = {
    "max": 0.0,
    "top1": 0.01,
    "top5": 0.05,
    "top10": 0.1,
    "top25": 0.25,
    "top50": 0.5,
    "mean": 1.0,
}
EXCESS_FPRS = (0.01, 0.05)
BASE = "dark / top10"  # the paper's slice score on the map of ``best`` for T1
DARKNESS_GROUPS = ((0.0, 0.6), (0.6, 0.75), (0.75, 1.01))  # mean weight of a slice's lesion
DISTANCE_GROUPS = ((1, 1), (2, 2), (3, 4), (5, 9), (10, None))  # slices to the nearest lesion
NEIGHBOURS = 2  # lesion-free slices this close to a lesion are left out in ``near_lesion_out``


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modality", choices=["t1", "flair"], default="t1")
    parser.add_argument("--out", type=Path, required=True, help="protocol.py's --out")
    parser.add_argument("--subjects", choices=["select", "test"], default="select")
    parser.add_argument("--results", type=Path, help="default: benchmarks/results/<out's name>")
    parser.add_argument(
        "--seeds", type=_seed_list, help="only these runs, e.g. 1,2,3,4 (default: every run)"
    )
    args = parser.parse_args()
    results = (args.results or RESULTS / args.out.name) / f"lgg-{args.modality}"
    folder = args.out / f"lgg-{args.modality}" / "runs" / "fae"
    found = (p.name[4:] for p in folder.glob("seed*"))
    seeds = args.seeds or sorted(int(n) for n in found if n.isdigit())
    runs = [folder / f"seed{seed}" for seed in seeds]
    missing = [str(r) for r in runs if not (r / "config.json").exists()]
    if missing or not runs:
        parser.error(f"no FAE run in {', '.join(missing) or folder}")
    cache = default_cache_dir()
    best = method_class(PROPOSED).map_settings("best", "t1")  # the maps of the protocol's rows
    shared = {k: best[k] for k in ("volume_center", "slice_median")}
    rows: dict[str, list[float]] = {}
    groups: dict[str, dict[str, list[float]]] = {}
    distances: dict[str, dict[str, list[float]]] = {}
    spread: dict[str, list[float]] = {}
    steps = []
    for run in tqdm(runs, desc="runs", unit="run"):
        est = load_method(run, progress=False)
        steps.append(est.step_)
        dataset = discover(est.meta["data"])

        def patients(subjects: str, est=est, dataset=dataset) -> SliceSet:
            ids = est.meta["splits"][subjects]
            return prepare_dataset(dataset, args.modality, est.prep, cache, ids, False)

        val = patients("val")
        ests = {
            m: est.with_maps(val, **shared, dark_weight=m == "dark") for m in ("dark", "centred")
        }
        slices = patients(args.subjects)
        scores, weight = score_slices(ests, slices)
        for name, s in scores.items():
            rows.setdefault(name, []).append(slice_metrics(s, slices.slice_labels)["auroc"])
        for group, row in by_lesion_darkness(slices, weight, scores).items():
            for key, value in row.items():
                if np.isfinite(value):  # a group without slices on this run says nothing
                    groups.setdefault(group, {}).setdefault(key, []).append(value)
        for group, row in by_lesion_distance(slices, scores).items():
            for key, value in row.items():
                distances.setdefault(group, {}).setdefault(key, []).append(value)
        for key, value in across_patients(slices, scores["dark / top25"]).items():
            spread.setdefault(key, []).append(value)
    base = np.array(rows[BASE])
    result = {
        "modality": args.modality,
        "subjects": args.subjects,
        "seeds": seeds,
        "steps": steps,
        "auroc": {
            name: {**mean_std(values), "delta": mean_std(np.array(values) - base)}
            for name, values in rows.items()
        },
        "by_lesion_darkness": {
            group: {key: mean_std(values) for key, values in row.items()}
            for group, row in groups.items()
        },
        "by_lesion_distance": {
            group: {key: mean_std(values) for key, values in row.items()}
            for group, row in distances.items()
        },
        "across_patients": {key: mean_std(values) for key, values in spread.items()},
    }
    name = "slice-scores" if args.subjects == "select" else f"slice-scores-{args.subjects}"
    save_result(results, name, result, _markdown(result))


def score_slices(
    ests: dict[str, AnomalyMethod], slices: SliceSet
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every (map, aggregation) pair's (N,) slice scores, and the darkness weight (N, S, S):
    ``ests`` are the same FAE with other map settings (so one pass of the network over
    ``slices`` serves them all), each calibrated on healthy slices (the thresholds of the
    ``excess`` scores); ``ests["dark"]`` has the weight."""
    images, masks = np.asarray(slices.images, np.float32), slices.masks
    first = next(iter(ests.values()))
    structure = first.maps(images, masks, first.model_)
    where = (slices.subject, slices.slice_index)
    out, weights = {}, {}
    for name, est in ests.items():
        c = est.config
        weights[name] = est.map_weight(images, masks)
        maps = finish_maps(structure, masks, c.volume_center, c.slice_median, *where, weights[name])
        scores = {agg: top_fraction(maps, masks, q) for agg, q in FRACTIONS.items()}
        for fpr in EXCESS_FPRS:
            pixel, _ = est.thresholds(fpr)
            excess = np.where(masks, np.maximum(maps - pixel, 0), 0)
            scores[f"excess{fpr:g}"] = excess.sum(axis=(1, 2), dtype=np.float64)
        out.update({f"{name} / {agg}": s for agg, s in scores.items()})
    return out, weights["dark"]


def by_lesion_darkness(slices: SliceSet, weight: np.ndarray, scores: dict) -> dict[str, dict]:
    """Where the weight moves lesion slices: the lesion slices grouped by the mean darkness
    weight of their lesion (0.5: as bright as the healthy median or brighter; 1: darker than
    all healthy tissue), each group's number of slices and, for the paper's top-10 % score on
    both maps, its mean share of lesion-free slices (with brain) scored below it (ties count
    half): each group's slice AUROC against every lesion-free slice with brain (nan for an
    empty group)."""
    lesion = slices.segs & slices.masks
    positive = np.flatnonzero(lesion.any(axis=(1, 2)))
    negative = ~slices.slice_labels & slices.masks.any(axis=(1, 2))
    darkness = np.array([weight[i][lesion[i]].mean() for i in positive])
    above = {  # each lesion slice's share of lesion-free slices scored below it, per map
        m: _share_below(scores[f"{m} / top10"][negative], scores[f"{m} / top10"][positive])
        for m in ("dark", "centred")
    }
    return {
        f"{max(low, 0.5):.2f}–{min(high, 1):.2f}": _group_row(
            (darkness >= low) & (darkness < high), above
        )
        for low, high in DARKNESS_GROUPS
    }


def by_lesion_distance(slices: SliceSet, scores: dict) -> dict[str, dict]:
    """Which lesion-free slices the slice score confuses with lesion slices: the lesion-free
    slices with brain grouped by how many slices lie between them and their patient's nearest
    lesion slice, each group's number of slices and, for ``best``'s top-25 % score on both
    maps, its mean share of lesion slices scored below it (ties count half: 0 when it is
    below every lesion slice, 0.5 when it is in the middle of them); then
    ``near_lesion_out``: the slice AUROC with the lesion-free slices within ``NEIGHBOURS``
    slices of a lesion left out, what the score would reach if those were not counted (no
    outline was drawn on them, but they lie beside one: the slices most likely to hold an
    unlabelled tumour edge or its mass effect)."""
    positive = slices.slice_labels
    negative = ~positive & slices.masks.any(axis=(1, 2))
    distance = np.full(len(positive), np.inf)
    for subject in np.unique(slices.subject):
        own = np.flatnonzero(slices.subject == subject)
        lesion = slices.slice_index[own][positive[own]]
        if len(lesion):
            gap = np.abs(slices.slice_index[own][:, None] - lesion[None])
            distance[own] = gap.min(axis=1)
    keys = {m: f"{m} / top25" for m in ("dark", "centred")}
    below = {  # each lesion-free slice's share of lesion slices scored below it, per map
        m: _share_below(scores[key][positive], scores[key][negative]) for m, key in keys.items()
    }
    out = {
        f"{low}–{high}" if high else f"≥ {low}": _group_row(
            (distance[negative] >= low) & (distance[negative] <= (high or np.inf)), below
        )
        for low, high in DISTANCE_GROUPS
    }
    kept = ~(negative & (distance <= NEIGHBOURS))
    out["near_lesion_out"] = {
        m: slice_metrics(scores[key][kept], positive[kept])["auroc"] for m, key in keys.items()
    }
    out["near_lesion_out"]["slices"] = float((~kept).sum())
    return out


def across_patients(slices: SliceSet, score: np.ndarray) -> dict[str, float]:
    """Whether one slice score's AUROC is lost to a few patients or to all: the largest gain
    from leaving one patient out, the mean slice AUROC within single patients (those with
    lesion and lesion-free slices), and, for scale, the AUROC of the slice's brain area alone
    (lesions lie in the large middle slices)."""
    labels = slices.slice_labels
    pooled = slice_metrics(score, labels)["auroc"]
    gains, within = [], []
    for subject in np.unique(slices.subject):
        own = slices.subject == subject
        gains.append(slice_metrics(score[~own], labels[~own])["auroc"] - pooled)
        if 0 < labels[own].sum() < own.sum():
            within.append(slice_metrics(score[own], labels[own])["auroc"])
    return {
        "leave_one_out_gain": max(gains),
        "within_patient": float(np.mean(within)),
        "brain_area": slice_metrics(slices.masks.sum(axis=(1, 2)), labels)["auroc"],
    }


def _share_below(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each of ``values``' share of ``reference`` scored below it, ties counting half."""
    reference = np.sort(reference)
    left = np.searchsorted(reference, values, "left")
    return (left + (np.searchsorted(reference, values, "right") - left) / 2) / len(reference)


def _group_row(group: np.ndarray, shares: dict[str, np.ndarray]) -> dict[str, float]:
    """A group's number of slices and its mean share on each map (nan for an empty group)."""
    row = {"slices": float(group.sum())}
    for m, share in shares.items():
        row[m] = float(share[group].mean()) if group.any() else float("nan")
    return row


def _markdown(result: dict) -> str:
    lines = [
        f"LGG {result['modality']}, {result['subjects']} patients, slice AUROC over seeds "
        f"{result['seeds']} at steps {result['steps']}:",
        "",
        f"| map / slice score | slice AUROC | difference from {BASE} (same seed) |",
        "|---|---|---|",
    ]
    for name, row in result["auroc"].items():
        d = row["delta"]
        lines.append(
            f"| {name} | {row['mean']:.3f} ± {row['std']:.3f} | {d['mean']:+.3f} ± {d['std']:.3f} |"
        )
    lines += _two_maps(
        "Lesion slices by the mean darkness weight of their lesion: each group's slice AUROC "
        "against every lesion-free slice with brain (top-10 % score):",
        "| lesion's mean weight | lesion slices | dark map | centred map |",
        result["by_lesion_darkness"],
    )
    lines += _two_maps(
        "Lesion-free slices with brain by their distance (in slices) to the patient's nearest "
        "lesion slice: each group's mean share of lesion slices scored below it (top-25 % "
        f"score); last row: the slice AUROC without the lesion-free slices within {NEIGHBOURS} "
        "slices of a lesion:",
        "| slices to the nearest lesion | lesion-free slices | dark map | centred map |",
        {
            f"slice AUROC, ≤ {NEIGHBOURS} left out" if group == "near_lesion_out" else group: row
            for group, row in result["by_lesion_distance"].items()
        },
    )
    cells = [
        f"{row['mean']:.3f} ± {row['std']:.3f}"
        for row in (
            result["across_patients"][k]
            for k in ("leave_one_out_gain", "within_patient", "brain_area")
        )
    ]
    lines += [
        "",
        "Across patients (dark map, top-25 % score): the largest slice AUROC gain from leaving one "
        "patient out, the mean slice AUROC within single patients, the brain area's slice AUROC:",
        "",
        "| largest gain, one patient left out | within patients | brain area alone |",
        "|---|---|---|",
        "| " + " | ".join(cells) + " |",
    ]
    return "\n".join(lines) + "\n"


def _two_maps(intro: str, header: str, groups: dict[str, dict]) -> list[str]:
    """A markdown table of groups: their number of slices, then mean ± std on both maps."""
    lines = ["", intro, "", header, "|---|---|---|---|"]
    for group, row in groups.items():
        cells = [f"{row[m]['mean']:.3f} ± {row[m]['std']:.3f}" for m in ("dark", "centred")]
        lines.append(f"| {group} | {row['slices']['mean']:.0f} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    main()
