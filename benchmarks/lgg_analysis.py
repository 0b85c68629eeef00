"""Why a method wins or loses on LGG: where its false positives are, and how training went.

For each finished run of ``benchmarks/lgg.py`` (and the thresholding baseline) it predicts the
test slices again and reports, at the threshold giving 5 % pixel FPR inside the head mask:
the share of false-positive pixels within ``--border`` pixels of the mask's edge (skull and
scalp in these skull-on scans), and the pixel AP when that border band is left out of the
evaluation, and the slice AUROC when slice scores leave it out. It also prints the first and
last training losses of each run.

    python benchmarks/lgg_analysis.py --out benchmark-output/lgg
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
from fae.evaluation import evaluate_maps, top_fraction_scores
from fae.io import atomic_path
from fae.methods.simple import Threshold
from fae.metrics import slice_metrics, threshold_at_fpr
from fae.model import FAE

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
    inner_scores = top_fraction_scores(maps, inner_masks)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmark-output/lgg"))
    parser.add_argument("--border", type=int, default=8, help="border band width in pixels (8)")
    args = parser.parse_args()
    cache = default_cache_dir()
    report = {}
    for dataset_dir in sorted(p for p in args.out.iterdir() if p.is_dir()):
        runs = sorted(
            r for r in dataset_dir.iterdir() if (r / "evaluation" / "metrics.json").exists()
        )
        if not runs:
            continue
        first = FAE.load(runs[0], progress=False)
        dataset = discover(SHARED / dataset_dir.name)
        test = first.meta["splits"]["test"]
        slices = prepare_dataset(
            dataset, first.meta["modality"], first.prep, cache, test, progress=False
        )
        maps = Threshold(progress=False).fit(slices).predict(slices)
        report[f"{dataset_dir.name}/threshold"] = analyse(slices, maps, args.border)
        report[f"{dataset_dir.name}/threshold"]["slice_auroc_of_centrality"] = centrality_auroc(
            slices
        )
        for run in runs:
            est = FAE.load(run, progress=False)
            entry = analyse(slices, est.predict(slices), args.border)
            with (run / "train_log.csv").open(newline="") as fh:
                losses = [float(r["loss"]) for r in csv.DictReader(fh)]
            entry.update(first_loss=losses[0], last_loss=losses[-1], steps=est.step_)
            report[f"{dataset_dir.name}/{run.name}"] = entry
    with atomic_path(args.out / "analysis.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    for key, r in report.items():
        if "slice_auroc_of_centrality" in r:
            auroc = r["slice_auroc_of_centrality"]
            print(f"{key.split('/')[0]}: slice AUROC of slice centrality alone = {auroc:.3f}")
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
