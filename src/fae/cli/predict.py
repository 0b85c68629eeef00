"""``fae predict``: anomaly maps of new scans, in each scan's own space, with thresholds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fae.cli import options


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="anomaly maps of new scans, in each scan's own space, with thresholds"
    )
    p.add_argument("inputs", type=Path, nargs="+", metavar="INPUT", help="NIfTI, folder, datalist")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--run", type=Path, help="run folder or checkpoint file")
    model.add_argument(
        "--onnx",
        type=Path,
        help="a model written by `fae export` instead of a run: onnxruntime makes the maps, "
        "no PyTorch needed (brain masks then come with the scans, or --brain-mask nonzero/otsu)",
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--fpr",
        type=float,
        default=0.05,
        help="calibrated false-positive rate on healthy data that sets the thresholds "
        "(default: %(default)s; calibrated: 0.001, 0.01, 0.05)",
    )
    p.add_argument(
        "--batch-size", type=int, default=64, help="slices per batch, across scans (default: 64)"
    )
    p.add_argument("--device", default="auto")
    options.add_channels(p)
    options.add_cache(p, "brain-mask")
    options.add_brain_mask_override(p)
    options.add_precision_override(p)
    p.set_defaults(func=predict)


def predict(args: argparse.Namespace) -> int:
    from fae.data.discover import collect_scans
    from fae.predict import predict_scans

    if args.onnx is not None:
        from fae.exported import ExportedModel

        estimator = ExportedModel(args.onnx)
    else:
        from fae.methods.base import load_method

        estimator = load_method(args.run, device=args.device, precision=args.precision)
    channels = options.channels(args) or estimator.meta.get("channels")
    scans, failures = collect_scans(args.inputs, estimator.meta.get("modality", ""), channels)
    for source, problem in failures:
        print(f"fae: error: {source}: {problem} (skipped)", file=sys.stderr)
    rows, failures = predict_scans(
        estimator,
        scans,
        args.out,
        args.fpr,
        args.batch_size,
        failures=failures,
        cache_dir=options.cache_dir(args),
        brain_mask_source=args.brain_mask,
    )
    print(f"wrote {len(rows)} scans to {args.out} (scores in {args.out / 'scores.csv'})")
    if failures:
        print(f"fae: {len(failures)} input(s) failed, see the errors above", file=sys.stderr)
        return 1
    return 0
