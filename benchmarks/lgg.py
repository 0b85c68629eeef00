"""Real-data benchmark: FAE vs intensity thresholding on the LGG FLAIR and T1 patients.

Trains on the lesion-free slices of half of the patients (split by patient, fixed seed) and
evaluates on the other half, for each requested backbone, and the thresholding baseline (the
histogram-equalised image itself as the anomaly map). Resumable: finished runs are skipped,
interrupted ones continue from their checkpoint. Writes ``OUT/results.json`` and
``OUT/results.md``.

    python benchmarks/lgg.py --out benchmark-output/lgg --steps 300
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from fae.data.cache import default_cache_dir
from fae.data.discover import discover
from fae.data.preprocess import PrepConfig
from fae.data.slices import prepare_dataset, split_subjects
from fae.evaluation import evaluate_maps
from fae.io import atomic_path
from fae.methods.statistics import Threshold
from fae.workflow import RunSpec, evaluate_run, train_or_resume

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATASETS = {"lgg-t1": "t1", "lgg-flair": "flair"}
# name → FAE settings; resnet18 uses ImageNet weights when torchvision has them, else random
VARIANTS = {
    "fae-efficientnet": {"backbone": "efficientnet-lite0", "train_batchnorm": False},
    "fae-resnet18": {"backbone": "resnet18", "train_batchnorm": False},
    "fae-resnet18-trainbn": {"backbone": "resnet18", "train_batchnorm": True},
    "fae-efficientnet-std": {
        "backbone": "efficientnet-lite0",
        "train_batchnorm": False,
        "standardize_features": True,
    },
}
SPLIT = {"test_fraction": 0.5, "val_fraction": 0.1, "split_seed": 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=SHARED)
    parser.add_argument("--out", type=Path, default=Path("benchmark-output/lgg"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seed", type=int, default=0, help="training seed (the split is fixed)")
    parser.add_argument(
        "--brain-mask",
        default="auto",
        help="where brain masks come from (auto: HD-BET on these skull-on scans; otsu: the "
        "head mask, what fae used before brain extraction)",
    )
    args = parser.parse_args()
    prep = PrepConfig(brain_mask=args.brain_mask)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    masks = results.setdefault("brain_mask", args.brain_mask)
    if masks != args.brain_mask:
        parser.error(f"{args.out} holds results with --brain-mask {masks}: use another --out")
    cache = default_cache_dir()
    for name in args.datasets.split(","):
        data, modality = args.data_root / name, DATASETS[name]
        key = f"{name}/threshold"
        if key not in results:
            results[key] = threshold_baseline(data, modality, cache, prep)
            save(results, args.out)
        for variant in args.variants.split(","):
            label = variant if args.seed == 0 else f"{variant}-seed{args.seed}"
            key = f"{name}/{label}"
            if key in results:
                continue
            params = {**VARIANTS[variant], "seed": args.seed}
            results[key] = run_fae(
                data, modality, args.out / name / label, params, args.steps, cache, prep
            )
            save(results, args.out)
    print((args.out / "results.md").read_text())


def threshold_baseline(data: Path, modality: str, cache: Path, prep: PrepConfig) -> dict:
    dataset = discover(data)
    splits = split_subjects(
        dataset, SPLIT["test_fraction"], SPLIT["val_fraction"], SPLIT["split_seed"]
    )
    test = splits["test"]
    slices = prepare_dataset(dataset, modality, prep, cache_dir=cache, subject_ids=test)
    started = time.perf_counter()
    maps = Threshold(progress=False).fit(slices).predict(slices)
    summary, _ = evaluate_maps(slices, maps)
    summary["wall_seconds"] = time.perf_counter() - started
    return summary


def run_fae(
    data: Path, modality: str, run: Path, params: dict, steps: int, cache: Path, prep: PrepConfig
) -> dict:
    started = time.perf_counter()
    params = {**params, "steps": steps, "checkpoint_every": 50}
    if params["backbone"] == "resnet18" and not _imagenet_resnet_available():
        params["weights"] = None
    spec = RunSpec(data, modality, params=params, prep=prep, **SPLIT)
    estimator = train_or_resume(spec, run, cache)
    train_seconds = time.perf_counter() - started
    summary = evaluate_run(run, data, run / "evaluation", cache_dir=cache)
    summary.pop("subjects")
    summary.update(
        steps=estimator.step_,
        weights=estimator.config.weights,
        train_seconds_this_session=train_seconds,
        train_steps_per_second=_steps_per_second(run),
    )
    return summary


def _steps_per_second(run: Path) -> float:
    """Training speed from the log, over the last uninterrupted stretch (seconds restart on
    resume)."""
    with (run / "train_log.csv").open(newline="") as fh:
        rows = [(int(r["step"]), float(r["seconds"])) for r in csv.DictReader(fh)]
    stretch = rows[-1:]
    for row in reversed(rows[:-1]):
        if row[1] >= stretch[0][1]:
            break
        stretch.insert(0, row)
    if len(stretch) < 2:
        return float("nan")
    return (stretch[-1][0] - stretch[0][0]) / (stretch[-1][1] - stretch[0][1])


def _imagenet_resnet_available() -> bool:
    from fae.errors import FaeInputError
    from fae.nn.backbones import FeatureExtractor

    try:
        FeatureExtractor("resnet18", weights="imagenet")
    except FaeInputError:
        return False
    return True


def save(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2))
    metrics = ("pixel_ap", "dice_at_fpr", "best_dice", "slice_auroc", "slice_ap")
    lines = [
        "| data | method | weights | steps | pixel AP | Dice@5%FPR | best Dice | slice AUROC "
        "| slice AP | train steps/s | test slices/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in results.items():
        if key == "brain_mask":
            continue
        name, method = key.split("/")
        weights = r.get("weights", "-") or "random"
        values = " | ".join(f"{r[m]:.3f}" for m in metrics)
        nan = float("nan")
        steps_s, slices_s = r.get("train_steps_per_second", nan), r.get("slices_per_second", nan)
        speed = f"{steps_s:.2f} | {slices_s:.1f}"
        lines.append(
            f"| {name} | {method} | {weights} | {r.get('steps', '-')} | {values} | {speed} |"
        )
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
