"""``fae report``: one self-contained HTML page of a run (or of a benchmark folder)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fae.errors import FaeInputError


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="one HTML page (opens from disk) of a run: settings, training, thresholds, metrics, "
        "and a slice browser of its evaluated or predicted scans",
    )
    p.add_argument("run", type=Path, nargs="?", help="the run folder (or its checkpoint)")
    p.add_argument("--eval", type=Path, dest="eval_dir", help="a `fae evaluate` output folder")
    p.add_argument("--pred", type=Path, dest="pred_dir", help="a `fae predict` output folder")
    p.add_argument(
        "--benchmark",
        type=Path,
        help="a `fae benchmark` folder: its comparison table beside the run's metrics; "
        "without RUN, the report of the whole comparison",
    )
    p.add_argument(
        "--subjects",
        choices=["test", "select"],
        default="test",
        help="without RUN: the benchmark's report (default) or selection patients",
    )
    p.add_argument("--fpr", type=float, default=0.05, help="the threshold the maps start at")
    p.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    p.set_defaults(func=report)


def report(args: argparse.Namespace) -> int:
    if args.run is None and args.benchmark is None:
        raise FaeInputError(None, "give a run folder, or --benchmark DIR for a whole comparison")
    if args.run is not None and not args.run.exists():
        raise FaeInputError(args.run, "run not found")
    for folder in (args.eval_dir, args.pred_dir, args.benchmark):
        if folder is not None and not folder.is_dir():
            raise FaeInputError(folder, "not a folder")
    from fae.report import benchmark_report, run_report  # after the checks: torch takes seconds

    if args.run is None:
        out = benchmark_report(args.benchmark, args.out, args.subjects)
    else:
        out = run_report(args.run, args.out, args.eval_dir, args.pred_dir, args.benchmark, args.fpr)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); open it in a browser")
    return 0
