"""``fae data inspect|prepare|skullstrip`` and ``fae make-synthetic``: datasets in and out."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fae.cli import options
from fae.errors import FaeInputError


def add(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="find, inspect and prepare datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("inspect", help="say what a dataset folder or datalist holds")
    p.add_argument("path", type=Path)
    options.add_channels(p)
    p.add_argument("--summary", action="store_true", help="omit the per-scan table")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the per-scan rows as JSON")
    p.set_defaults(func=inspect)

    p = data_sub.add_parser("prepare", help="prepare (and cache) 128x128 slices as the paper does")
    p.add_argument("path", type=Path)
    options.add_prep_options(p, modality_required=True)
    p.add_argument("--device", default="auto", help="for HD-BET: auto, cpu, cuda, cuda:1 ...")
    p.set_defaults(func=prepare)

    p = data_sub.add_parser(
        "skullstrip", help="brain masks with HD-BET (offline), written beside a datalist"
    )
    p.add_argument("inputs", type=Path, nargs="+", metavar="INPUT", help="NIfTI, folder, datalist")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--modality", default="", help="which image of each subject (default: the only)")
    options.add_channels(p)
    p.add_argument(
        "--mode",
        choices=["fast", "accurate"],
        default="fast",
        help="HD-BET with one network (fast, default) or all five (accurate, 5x the time)",
    )
    p.add_argument("--tta", action="store_true", help="also average 7 mirrored copies (8x time)")
    p.add_argument(
        "--spacing",
        metavar="X,Y,Z",
        help="voxel size in mm along the array axes, used instead of the header's for every "
        "scan (for scans whose header has none, or a wrong one)",
    )
    p.add_argument("--stripped", action="store_true", help="also write the skull-stripped image")
    p.add_argument(
        "--force", action="store_true", help="strip scans that are already skull-stripped too"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    options.add_cache(p, "mask")
    p.set_defaults(func=skullstrip)

    p = sub.add_parser("make-synthetic", help="write synthetic brains with known anomalies")
    p.add_argument("out", type=Path)
    p.add_argument("--subjects", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--modalities", default="t1,t2,flair", help="comma-separated (default: %(default)s)"
    )
    p.add_argument("--test-fraction", type=float, default=0.5)
    p.add_argument(
        "--resolution-mm",
        type=int,
        default=1,
        help="voxel size: 1 (default) or 2 for 8x smaller volumes, quick to write and train on",
    )
    p.add_argument("--workers", type=int, default=1, help="processes (same files for any number)")
    p.set_defaults(func=make_synthetic)


def inspect(args: argparse.Namespace) -> int:
    from fae.data.discover import discover
    from fae.data.inspect import format_report, inspect_dataset
    from fae.io import atomic_path

    dataset = discover(args.path, options.channels(args))
    rows = inspect_dataset(dataset)
    print(format_report(dataset, rows, per_subject=not args.summary))
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps([r.to_dict() for r in rows], indent=1))
    return 0


def prepare(args: argparse.Namespace) -> int:
    from collections import Counter

    from fae.data.discover import discover
    from fae.data.slices import prepare_dataset

    dataset = discover(args.path, options.channels(args))
    config = options.prep_config(args)
    cache_dir = options.cache_dir(args)
    slices = prepare_dataset(dataset, args.modality, config, cache_dir, device=args.device)
    n_lesion = int(slices.slice_labels.sum())
    methods = Counter(slices.mask_methods)
    print(
        f"{len(slices.subject_ids)} subjects, {len(slices)} slices of {config.size}x{config.size} "
        f"({n_lesion} with lesion, {len(slices) - n_lesion} lesion-free); brain masks: "
        + ", ".join(f"{method} {count}" for method, count in sorted(methods.items()))
    )
    if cache_dir is not None:
        print(f"cached in {cache_dir / ('prep-' + config.key())}")
    return 0


def skullstrip(args: argparse.Namespace) -> int:
    from fae.data.brainmask import parse_spacing
    from fae.data.discover import collect_scans
    from fae.data.skullstrip import skullstrip_scans

    spacing = parse_spacing(args.spacing) if args.spacing else None
    scans, failures = collect_scans(args.inputs, args.modality.lower(), options.channels(args))
    for source, problem in failures:
        print(f"fae: error: {source}: {problem} (skipped)", file=sys.stderr)
    rows, failures = skullstrip_scans(
        scans,
        args.out,
        args.mode,
        args.tta,
        spacing,
        args.device,
        args.stripped,
        args.force,
        options.cache_dir(args),
        failures=failures,
    )
    print(f"wrote {len(rows)} brain masks to {args.out} (see brainmasks.csv, datalist.csv)")
    if failures:
        print(f"fae: {len(failures)} input(s) failed, see the errors above", file=sys.stderr)
        return 1
    return 0


def make_synthetic(args: argparse.Namespace) -> int:
    from fae.data.synthetic import make_synthetic as write

    if args.subjects < 1:
        raise FaeInputError(None, f"--subjects must be at least 1, got {args.subjects}")
    modalities = [m.strip().lower() for m in args.modalities.split(",") if m.strip()]
    out = write(
        args.out,
        args.subjects,
        seed=args.seed,
        modalities=modalities,
        test_fraction=args.test_fraction,
        resolution_mm=args.resolution_mm,
        workers=args.workers,
    )
    print(f"wrote {args.subjects} subjects to {out}")
    return 0
