"""A gallery of real slices for the README: a good, a typical and a bad report patient.

From the runs of ``benchmarks/protocol.py`` at one seed (``OUT/lgg-<modality>/runs/<method>/
seed<N>``; a baseline whose run folder is gone is trained again, deterministically, to
``--steps``; FAE is used at whatever stage its run has reached), the report patients are ranked
by the ``best`` preset's Dice at the 5 %-FPR threshold (FAE's run with the preset's map settings
for the modality, refitted and calibrated on the healthy validation scans); the best, the median
and the worst patient with a lesion of at least 200 pixels are shown on the slice where their
lesion is largest: the image, the ground truth, and each method's map, every method on its own
calibrated scale (from its healthy 5 %-FPR threshold to the highest healthy value), the same for
all three patients.

    .venv/bin/python benchmarks/gallery.py --modality t1 --out benchmark-output/protocol \
        --png docs/gallery_t1.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fae.config import read_config_file
from fae.data.cache import default_cache_dir
from fae.data.discover import discover
from fae.data.slices import prepare_dataset
from fae.evaluation import evaluate_maps, slice_scores
from fae.io import atomic_path
from fae.methods.base import load_method
from fae.methods.registry import PROPOSED, method_class
from protocol import CONFIG, train_run

BASELINES = ("threshold", "dfr", "vae", "ae-mse", "ae-ssim", "bm")
BEST = f"{PROPOSED} (best preset)"
TITLES = {PROPOSED: f"{PROPOSED} (paper's map)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modality", choices=["t1", "flair"], required=True)
    parser.add_argument("--out", type=Path, required=True, help="protocol.py's --out")
    parser.add_argument("--png", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2000, help="the baselines' stage")
    args = parser.parse_args()
    runs = args.out / f"lgg-{args.modality}" / "runs"
    cache, overrides = default_cache_dir(), read_config_file(CONFIG)
    proposed = load_method(runs / PROPOSED / f"seed{args.seed}", progress=False)
    dataset = discover(proposed.meta["data"])
    splits = proposed.meta["splits"]
    test = prepare_dataset(dataset, args.modality, proposed.prep, cache, splits["test"])
    val = prepare_dataset(dataset, args.modality, proposed.prep, cache, splits["val"])
    best = proposed.with_maps(val, **method_class(PROPOSED).map_settings("best", args.modality))
    methods = {BEST: best, PROPOSED: proposed}
    for name in BASELINES:
        run = runs / name / f"seed{args.seed}"
        train_run(run, args.modality, name, args.seed, args.steps, overrides, proposed.prep, cache)
        methods[name] = load_method(run, progress=False)
    maps = {name: est.predict(test) for name, est in methods.items()}
    _, rows = evaluate_maps(test, maps[BEST], slice_scores(maps[BEST], test.masks))
    rows = sorted((r for r in rows if r["lesion_pixels"] >= 200), key=lambda r: r["dice_at_fpr"])
    chosen = {"best": rows[-1], "typical": rows[len(rows) // 2], "worst": rows[0]}
    title = (
        f"LGG {args.modality}, report patients, seed {args.seed}; FAE {proposed.step_:,} steps, "
        f"the others {args.steps:,}"
    )
    _figure(test, maps, methods, chosen, args.png, title)
    print(f"wrote {args.png}")
    for label, row in chosen.items():
        print(f"{label}: {row['subject']} best-preset Dice@5%FPR {row['dice_at_fpr']:.3f}")


def _figure(test, maps: dict, methods: dict, chosen: dict, path: Path, title: str) -> None:
    columns = ["image", "ground truth", *(TITLES.get(name, name) for name in maps)]
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
            f"{label}\n{subject['subject']}\nbest Dice {subject['dice_at_fpr']:.2f}",
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
