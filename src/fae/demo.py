"""``fae demo``: the whole pipeline on the embedded synthetic dataset, in a few minutes on a CPU."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from fae.data.discover import discover
from fae.data.preprocess import PrepConfig
from fae.data.slices import prepare_dataset, split_subjects
from fae.data.synthetic import make_synthetic
from fae.evaluation import best_and_worst_slices, evaluate_maps
from fae.io import atomic_path
from fae.methods.threshold import ThresholdBaseline
from fae.viz import save_slice_figure

MODALITIES = ("t1", "flair")


def run_demo(out: Path, n_subjects: int = 12, seed: int = 0) -> dict:
    """Make (or reuse) synthetic data in ``out/data``, evaluate the intensity baseline per
    modality and anomaly kind, write ``out/metrics.json`` and a figure, and print a table."""
    data_dir = out / "data"
    datalist = data_dir / "datalist.csv"
    if not datalist.exists():
        make_synthetic(data_dir, n_subjects, seed=seed, modalities=MODALITIES)
    dataset = discover(datalist)
    test_ids = split_subjects(dataset, seed=seed)["test"]
    kinds = _anomaly_kinds(data_dir / "anomalies.csv")
    config = PrepConfig()
    results: dict = {"method": "threshold", "subjects": n_subjects, "seed": seed, "modalities": {}}
    figures = []
    for modality in MODALITIES:
        slices = prepare_dataset(dataset, modality, config, out / "cache", subject_ids=test_ids)
        maps = ThresholdBaseline().fit(slices.images).predict(slices.images, slices.masks)
        summary, _ = evaluate_maps(slices, maps)
        by_kind = {}
        for kind in sorted(set(kinds.values())):
            ids = [s for s in test_ids if kinds.get(s) == kind]
            part = slices.subjects(ids)
            keep = np.isin(slices.subject, [slices.subject_ids.index(s) for s in ids])
            by_kind[kind] = evaluate_maps(part, maps[keep])[0]
        results["modalities"][modality] = {"all": summary, "by_kind": by_kind}
        figure = out / f"threshold_{modality}.png"
        best, worst = best_and_worst_slices(slices, maps, summary["threshold_at_fpr"])
        rows = np.concatenate([best, worst])
        names = [f"best {i + 1}" for i in range(len(best))] + [
            f"worst {i + 1}" for i in range(len(worst))
        ]
        labels = [
            f"{name}: {slices.subject_ids[slices.subject[r]]} z={slices.slice_index[r]}"
            for name, r in zip(names, rows, strict=True)
        ]
        title = f"threshold baseline, synthetic {modality}"
        save_slice_figure(
            slices.images[rows], slices.segs[rows], maps[rows], figure, labels, title, 1.0
        )
        figures.append(figure)
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2))
    print(format_table(results))
    print(f"\nmetrics: {out / 'metrics.json'}")
    for f in figures:
        print(f"figure:  {f}")
    return results


def format_table(results: dict) -> str:
    """Markdown table: one row per modality and anomaly kind."""
    lines = [
        "| modality | anomalies | pixel AP | Dice@5%FPR | best Dice | slice AUROC |",
        "|---|---|---|---|---|---|",
    ]
    for modality, res in results["modalities"].items():
        for kind, m in [("all", res["all"]), *res["by_kind"].items()]:
            lines.append(
                f"| {modality} | {kind} | {m['pixel_ap']:.3f} | {m['dice_at_fpr']:.3f} | "
                f"{m['best_dice']:.3f} | {m['slice_auroc']:.3f} |"
            )
    return "\n".join(lines)


def _anomaly_kinds(path: Path) -> dict[str, str]:
    with path.open(newline="") as fh:
        return {row["subject"]: row["kind"] for row in csv.DictReader(fh)}
