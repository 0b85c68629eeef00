"""``fae export``: a trained run as one ONNX file, for prediction without PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path

from fae.errors import FaeInputError


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="a run's slice → map network as one ONNX file (fp32, dynamic batch) with its "
        "preprocessing and thresholds in the metadata; fae predict --onnx uses it",
    )
    p.add_argument("run", type=Path, help="the run folder (or its checkpoint)")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", type=Path, required=True, help="the file to write (model.onnx)")
    p.set_defaults(func=export)


def export(args: argparse.Namespace) -> int:
    from fae.exported import CHECK_SLICES, export_onnx

    if not args.run.exists():
        raise FaeInputError(args.run, "run not found")
    difference = export_onnx(args.run, args.out)
    size = args.out.stat().st_size / 1e6
    print(
        f"wrote {args.out} ({size:.1f} MB); its maps on {CHECK_SLICES} random slices differ "
        f"from PyTorch's fp32 maps by at most {difference:.2g}"
    )
    return 0
