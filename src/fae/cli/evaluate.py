"""``fae evaluate`` (metrics of a run on labelled scans) and ``fae calibrate`` (its thresholds
on your healthy scans)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fae.cli import options


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics, per-subject table and figure of a trained run")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--subjects",
        choices=["auto", "test", "select", "all"],
        default="auto",
        help="the run's report (test) or selection patients, or all subjects (default: auto, "
        "the test patients of the run's own data, else all)",
    )
    p.add_argument("--device", default="auto")
    options.add_cache(p)
    options.add_brain_mask_override(p)
    options.add_precision_override(p)
    p.set_defaults(func=evaluate)

    p = sub.add_parser("calibrate", help="recompute a run's thresholds on your healthy scans")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="healthy scans: folder or datalist")
    p.add_argument(
        "--subjects",
        choices=["all", "val"],
        default="all",
        help="all subjects of --data (default), or the run's own validation subjects",
    )
    p.add_argument("--device", default="auto")
    options.add_cache(p)
    options.add_brain_mask_override(p)
    p.set_defaults(func=calibrate)


def evaluate(args: argparse.Namespace) -> int:
    from fae.workflow import evaluate_run

    summary = evaluate_run(
        args.run,
        args.data,
        args.out,
        args.subjects,
        options.cache_dir(args),
        args.device,
        brain_mask=args.brain_mask,
        precision=args.precision,
    )
    for key in ("pixel_ap", "dice_at_fpr", "best_dice", "slice_auroc", "slice_ap"):
        print(f"{key:<12} {summary[key]:.4f}")
    print(f"{summary['n_subjects']} subjects, {summary['n_slices']} slices; wrote {args.out}")
    return 0


def calibrate(args: argparse.Namespace) -> int:
    from fae.workflow import calibrate_run

    calibration = calibrate_run(
        args.run,
        args.data,
        options.cache_dir(args),
        args.device,
        subjects=args.subjects,
        brain_mask=args.brain_mask,
    )
    print(f"calibrated on {calibration['n_slices']} healthy slices of {args.data}")
    for fpr, t in calibration["pixel"].items():
        print(
            f"FPR {fpr:<6} pixel threshold {t:.4f}  slice threshold {calibration['slice'][fpr]:.4f}"
        )
    return 0
