"""Why a method wins or loses on LGG: where its false positives are, and how training went.

For each finished run of ``benchmarks/lgg.py`` (and the thresholding baseline), or of every
method of a ``fae benchmark`` output folder (``--out`` holding ``runs/``), it predicts the test
slices again and reports, at the threshold giving 5 % pixel FPR inside the head mask:
the share of false-positive pixels within ``--border`` pixels of the mask's edge (skull and
scalp in these skull-on scans), and the pixel AP when that border band is left out of the
evaluation, and the slice AUROC when slice scores leave it out. It also prints the first and
last training losses of each run.

    python benchmarks/lgg_analysis.py --out benchmark-output/lgg
    python benchmarks/lgg_analysis.py --out benchmark-output/bench/lgg-flair
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from fae.data.cache import default_cache_dir
from fae.data.discover import discover
from fae.data.slices import SliceSet, prepare_dataset
from fae.evaluation import evaluate_maps, slice_scores
from fae.io import atomic_path
from fae.methods.base import load_method
from fae.methods.statistics import Threshold
from fae.metrics import slice_metrics, threshold_at_fpr


def border_band(masks: np.ndarray, width: int) -> np.ndarray:
    """Pixels of each slice's mask within ``width`` pixels of its edge."""
    inner = np.stack([ndimage.binary_erosion(m, iterations=width) for m in masks])
    return masks & ~inner


def analyse(slices: SliceSet, maps: np.ndarray, width: int) -> dict:
    band = border_band(slices.masks, width)
    t = threshold_at_fpr(maps, slices.segs, mask=slices.masks)
    false_pos = (maps >= t) & slices.masks & ~slices.segs
    inner_masks = slices.masks & ~band
    inner = SliceSet(
        slices.images,
        slices.segs & inner_masks,
        inner_masks,
        slices.subject,
        slices.slice_index,
        slices.subject_ids,
    )
    inner_scores = slice_scores(maps, inner_masks)
    return {
        "slice_auroc_without_border": slice_metrics(inner_scores, slices.slice_labels)["auroc"],
        "fp_in_border": float((false_pos & band).sum() / max(false_pos.sum(), 1)),
        "border_share_of_mask": float(band.sum() / slices.masks.sum()),
        "lesion_in_border": float((slices.segs & band).sum() / max(slices.segs.sum(), 1)),
        "pixel_ap_without_border": evaluate_maps(inner, np.where(inner_masks, maps, 0))[0][
            "pixel_ap"
        ],
    }


def centrality_auroc(slices: SliceSet) -> float:
    """Slice AUROC of a score that knows nothing but how central a slice is in its stack:
    lesions sit mid-stack, so this shows how much slice position alone separates the classes."""
    centrality = np.zeros(len(slices))
    for i in range(len(slices.subject_ids)):
        sel = np.flatnonzero(slices.subject == i)
        centrality[sel] = -np.abs(np.linspace(-1, 1, len(sel)))
    return slice_metrics(centrality, slices.slice_labels)["auroc"]


def finished_runs(out: Path) -> dict[str, list[tuple[str, Path]]]:
    """Evaluated runs by dataset: ``fae benchmark``'s ``runs/<method>/seed0`` (named by method),
    or ``benchmarks/lgg.py``'s ``<dataset>/<variant>``."""
    if (out / "runs").is_dir():
        runs = [r for r in sorted((out / "runs").glob("*/seed0")) if _evaluated(r / "eval")]
        return {out.name: [(r.parent.name, r) for r in runs]} if runs else {}
    groups = {}
    for dataset_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        runs = [r for r in sorted(dataset_dir.iterdir()) if _evaluated(r / "evaluation")]
        if runs:
            groups[dataset_dir.name] = [(r.name, r) for r in runs]
    return groups


def _evaluated(folder: Path) -> bool:
    return (folder / "metrics.json").exists()


def _losses(log: Path) -> list[float]:
    if not log.exists():
        return []
    with log.open(newline="") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh) if r.get("loss")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmark-output/lgg"))
    parser.add_argument("--border", type=int, default=8, help="border band width in pixels (8)")
    args = parser.parse_args()
    cache = default_cache_dir()
    report = {}
    for name, runs in finished_runs(args.out).items():
        first = load_method(runs[0][1], progress=False)
        dataset = discover(Path(first.meta["data"]), first.meta.get("channels"))
        test = first.meta["splits"]["test"]
        slices = prepare_dataset(
            dataset, first.meta["modality"], first.prep, cache, test, progress=False
        )
        if "threshold" not in dict(runs):
            maps = Threshold(progress=False).fit(slices).predict(slices)
            report[f"{name}/threshold"] = analyse(slices, maps, args.border)
        report[f"{name}/centrality"] = {"slice_auroc_of_centrality": centrality_auroc(slices)}
        for label, run in runs:
            est = load_method(run, device="cpu", progress=False)
            entry = analyse(slices, est.predict(slices), args.border)
            losses = _losses(run / "train_log.csv")
            if losses:
                entry.update(first_loss=losses[0], last_loss=losses[-1], steps=est.step_)
            report[f"{name}/{label}"] = entry
    with atomic_path(args.out / "analysis.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    for key, r in report.items():
        if "slice_auroc_of_centrality" in r:
            auroc = r["slice_auroc_of_centrality"]
            print(f"{key.split('/')[0]}: slice AUROC of slice centrality alone = {auroc:.3f}")
    report = {k: r for k, r in report.items() if "fp_in_border" in r}
    print(
        "| run | FP in border band | border share of mask | pixel AP without border "
        "| slice AUROC without border | loss |"
    )
    print("|---|---|---|---|---|---|")
    for key, r in report.items():
        loss = f"{r['first_loss']:.3f} to {r['last_loss']:.3f}" if "last_loss" in r else "-"
        print(
            f"| {key} | {r['fp_in_border']:.2f} | {r['border_share_of_mask']:.2f} | "
            f"{r['pixel_ap_without_border']:.3f} | {r['slice_auroc_without_border']:.3f} | {loss} |"
        )


if __name__ == "__main__":
    main()
