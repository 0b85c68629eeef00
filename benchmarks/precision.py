"""bf16 against fp32 maps of one trained run: the same weights, the same test slices.

Prints the maximum and mean absolute difference of the maps (inside the brain), and the
metrics of each, so that the effect of bf16 arithmetic on the maps themselves is seen apart
from its effect on training (for that, compare ``fae benchmark --precision fp32`` with
``--precision bf16`` runs over seeds: README, "Speed").

    python benchmarks/precision.py --run RUN --data ../shared/data/lgg-t1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fae.data.cache import default_cache_dir
from fae.data.discover import discover
from fae.data.slices import prepare_dataset
from fae.methods.base import load_method

METRICS = ("pixel_ap", "dice_at_fpr", "best_dice", "slice_auroc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    estimator = load_method(args.run, device="cpu")
    meta = estimator.meta
    dataset = discover(args.data, meta.get("channels"))
    slices = prepare_dataset(
        dataset,
        meta["modality"],
        estimator.prep,
        default_cache_dir(),
        meta["splits"]["test"],
        device="cpu",
    )
    maps, metrics = {}, {}
    for precision in ("fp32", "bf16"):  # the same weights and slices, maps in each precision
        estimator.map_precision_override = precision
        maps[precision] = estimator.predict(slices)
        summary, _ = estimator.evaluate(slices, maps[precision])
        metrics[precision] = {k: summary[k] for k in METRICS}
    inside = slices.masks
    diff = np.abs(maps["bf16"] - maps["fp32"])[inside]
    fp32 = maps["fp32"][inside]
    result = {
        "run": str(args.run),
        "trained_in": meta.get("precision", "fp32"),
        "slices": len(slices),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "fp32_map_mean": float(fp32.mean()),
        "fp32_map_std": float(fp32.std()),
        "metrics": metrics,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
