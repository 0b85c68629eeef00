"""A gallery of real slices for the README: a good, a typical and a bad report patient.

From the seed-0 runs of ``benchmarks/protocol.py`` (``OUT/lgg-<modality>/runs/<method>/seed0``;
thresholding is computed directly), the report patients are ranked by FAE's Dice at the 5 %-FPR
threshold; the best, the median and the worst patient with a lesion of at least 200 pixels are
shown on the slice where their lesion is largest: the image, the ground truth, and each
method's map, every method on its own calibrated scale (from its healthy 5 %-FPR threshold to
the highest healthy value), the same for all three patients.

    .venv/bin/python benchmarks/gallery.py --modality t1 --out benchmark-output/protocol \
        --png docs/gallery_t1.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fae.data.cache import default_cache_dir
from fae.data.discover import discover
from fae.data.slices import prepare_dataset
from fae.evaluation import evaluate_maps, slice_scores
from fae.io import atomic_path
from fae.methods.base import load_method
from fae.methods.registry import METHODS, PROPOSED, method_class


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modality", choices=["t1", "flair"], required=True)
    parser.add_argument("--out", type=Path, required=True, help="protocol.py's --out")
    parser.add_argument("--png", type=Path, required=True)
    args = parser.parse_args()
    runs = args.out / f"lgg-{args.modality}" / "runs"
    proposed = load_method(runs / PROPOSED / "seed0", progress=False)
    meta, cache = proposed.meta, default_cache_dir()
    dataset = discover(meta["data"])
    test = prepare_dataset(dataset, args.modality, proposed.prep, cache, meta["splits"]["test"])
    val = prepare_dataset(dataset, args.modality, proposed.prep, cache, meta["splits"]["val"])
    methods = {PROPOSED: proposed}
    for name in METHODS:
        if name != PROPOSED and (runs / name / "seed0" / "checkpoint.pt").exists():
            methods[name] = load_method(runs / name / "seed0", progress=False)
    if "threshold" not in methods:
        methods["threshold"] = method_class("threshold")(progress=False).fit(val.lesion_free())
    maps = {name: est.predict(test) for name, est in methods.items()}
    own = maps[PROPOSED]
    _, rows = evaluate_maps(test, own, slice_scores(own, test.masks))
    rows = sorted((r for r in rows if r["lesion_pixels"] >= 200), key=lambda r: r["dice_at_fpr"])
    chosen = {"best": rows[-1], "typical": rows[len(rows) // 2], "worst": rows[0]}
    _figure(test, maps, methods, chosen, args.png, f"LGG {args.modality}, report patients")
    print(f"wrote {args.png}")


def _figure(test, maps: dict, methods: dict, chosen: dict, path: Path, title: str) -> None:
    columns = ["image", "ground truth", *maps]
    figure = Figure(figsize=(1.9 * len(columns), 2.1 * len(chosen) + 0.5), facecolor="black")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(chosen), len(columns), squeeze=False)
    for row, (label, subject) in enumerate(chosen.items()):
        index = test.subject_ids.index(subject["subject"])
        rows = np.flatnonzero(test.subject == index)
        k = rows[np.argmax(test.segs[rows].sum(axis=(1, 2)))]
        image, seg = np.rot90(test.images[k]), np.rot90(test.segs[k])
        axes[row, 0].imshow(image, cmap="gray", vmin=0, vmax=1)
        axes[row, 1].imshow(image, cmap="gray", vmin=0, vmax=1)
        axes[row, 1].contour(seg.astype(np.float32), levels=[0.5], colors="red", linewidths=0.8)
        for col, name in enumerate(maps, start=2):
            low, _ = methods[name].thresholds(0.05)
            high = max(float(methods[name].calibration_["max"]), low * 1.05 + 1e-6)
            axes[row, col].imshow(np.rot90(maps[name][k]), cmap="inferno", vmin=low, vmax=high)
        axes[row, 0].set_ylabel(
            f"{label}\n{subject['subject']}\nFAE Dice {subject['dice_at_fpr']:.2f}",
            color="white",
            fontsize=7,
        )
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, name in zip(axes[0], columns, strict=True):
        ax.set_title(name, color="white", fontsize=9)
    figure.suptitle(
        f"{title}: each map from its healthy 5 %-FPR threshold (dark) to its healthy maximum",
        color="white",
        fontsize=9,
    )
    figure.subplots_adjust(left=0.07, right=0.99, bottom=0.01, top=0.9, wspace=0.03, hspace=0.05)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=90, facecolor=figure.get_facecolor())


if __name__ == "__main__":
    main()
