"""``fae demo``: the whole pipeline on the built-in synthetic brains, in minutes on a CPU.

Synthetic T1 brains → healthy training slices → Feature-Autoencoder training → anomaly maps of
the test brains → metrics per anomaly kind, next to intensity thresholding → figures.
Re-running continues where it stopped (data, slice cache and the training checkpoint are kept).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fae.data.discover import discover
from fae.data.slices import SliceSet, prepare_dataset
from fae.data.synthetic import make_synthetic
from fae.evaluation import anomaly_kinds, evaluate_by_kind, slices_by_kind
from fae.io import atomic_path
from fae.methods.registry import PROPOSED, method_class
from fae.metrics import slice_metrics
from fae.workflow import RunSpec, save_best_and_worst, train_or_resume

MODALITY = "t1"
# The paper's model, but 1,000 steps (and a 5x learning rate to make up for them), a frozen
# extractor BatchNorm (features computed once), standardised features and the map settings of
# the "best" preset for T1 (each scan centred on its own quantile, the median across slices), so
# that the demo ends in minutes; but not its darkness weight, a prior for LGG's mostly not-bright
# T1 tumours that halves the evidence of the demo's bright anomalies (overall pixel AP 0.023 with
# it, 0.142 without, in fp32: README, "What the demo does"); EfficientNet-Lite0 because its
# ImageNet weights install with the package, while ResNet-18's must be downloaded. Fewer steps
# leave FAE behind thresholding (pixel AP 0.014 after 300 steps, 0.086 after 600, read without
# centring and median; README, "What the demo does").
DEMO_STEPS = 1000
DEMO_PARAMS = {
    "backbone": "efficientnet-lite0",
    "lr": 1e-3,
    "train_batchnorm": False,
    "checkpoint_every": 100,
    **method_class(PROPOSED).map_settings("best", MODALITY),
    "dark_weight": False,
    "dark_smooth": 0.0,
    "slice_median": 3,  # best's 5 slices on T1 came with the smoothed darkness weight
    "slice_score": "top10",  # best's top 25 % was chosen on LGG T1 and not measured here
}


def run_demo(
    out: Path,
    n_subjects: int = 12,
    seed: int = 0,
    steps: int | None = None,
    standardize_features: bool = True,
    dark_weight: bool = False,
    precision: str | None = None,
) -> dict:
    """Run (or continue) the demo in ``out``; prints a table and returns the metrics.
    ``precision`` None leaves the method's default (auto: bf16 where the hardware has it)."""
    data_dir, run = out / "data", out / "run"
    datalist = data_dir / "datalist.csv"
    if not datalist.exists():
        make_synthetic(data_dir, n_subjects, seed=seed, modalities=(MODALITY,))
    params = {**DEMO_PARAMS, "seed": seed, "standardize_features": standardize_features,
              "dark_weight": dark_weight}  # fmt: skip
    if precision is not None:
        params["precision"] = precision
    if steps or not (run / "checkpoint.pt").exists():  # else: the run's own, when continued
        params["steps"] = steps or DEMO_STEPS
    cache = out / "cache"
    spec = RunSpec(datalist, MODALITY, params=params, split_seed=seed)
    estimator = train_or_resume(spec, run, cache)
    dataset = discover(datalist)
    slices = prepare_dataset(
        dataset, MODALITY, estimator.prep, cache, estimator.meta["splits"]["test"]
    )
    kinds = anomaly_kinds(data_dir)
    fae_maps = estimator.predict(slices)
    threshold = method_class("threshold")(progress=False).fit(slices)
    threshold_maps = threshold.predict(slices)
    results = {
        "steps": estimator.step_,
        "fae": evaluate_by_kind(
            slices, fae_maps, kinds, estimator.slice_scores(fae_maps, slices.masks)
        ),
        "threshold": evaluate_by_kind(slices, threshold_maps, kinds),
        "brain area": brain_area_auroc(slices, kinds),
    }
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2))
    figures = []
    for method, maps, est in (
        ("fae", fae_maps, estimator),
        ("threshold", threshold_maps, threshold),
    ):
        path = out / f"{method}_slices.png"
        title = f"{method}, synthetic {MODALITY}: best and worst slices"
        at = results[method]["all"]["threshold_at_fpr"]
        figures.append(save_best_and_worst(slices, maps, at, path, title, est.display_range()))
    print(format_table(results))
    print(f"\nFAE trained {estimator.step_} steps; metrics: {out / 'metrics.json'}")
    for f in figures:
        print(f"figure: {f}")
    return results


def brain_area_auroc(slices: SliceSet, kinds: dict[str, str]) -> dict[str, dict]:
    """Slice AUROC of each slice's brain area alone, over all subjects and per anomaly kind: a
    reference that detects nothing. The synthetic lesions lie in large central slices, so a
    slice score that grows with the brain's area ranks lesion slices first without finding
    them."""
    area = slices.masks.reshape(len(slices.masks), -1).sum(1).astype(np.float64)
    groups = {"all": np.ones(len(area), bool), **slices_by_kind(slices, kinds)}
    return {
        kind: {"slice_auroc": slice_metrics(area[keep], slices.slice_labels[keep])["auroc"]}
        for kind, keep in groups.items()
    }


def format_table(results: dict) -> str:
    """Markdown table: FAE next to thresholding, per anomaly kind, and the brain area's slice
    AUROC."""
    lines = [
        "| anomalies | method | pixel AP | Dice@5%FPR | best Dice | slice AUROC |",
        "|---|---|---|---|---|---|",
    ]
    for kind in results["fae"]:
        for method in ("fae", "threshold"):
            m = results[method][kind]
            lines.append(
                f"| {kind} | {method} | {m['pixel_ap']:.3f} | {m['dice_at_fpr']:.3f} | "
                f"{m['best_dice']:.3f} | {m['slice_auroc']:.3f} |"
            )
        if kind in results["brain area"]:
            auroc = results["brain area"][kind]["slice_auroc"]
            lines.append(f"| {kind} | brain area | – | – | – | {auroc:.3f} |")
    return "\n".join(lines)
