"""``fae benchmark``: several methods over several seeds on one dataset, compared."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fae.cli import options
from fae.errors import FaeInputError
from fae.methods.registry import METHODS


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "benchmark", help="train and evaluate several methods over several seeds, compare them"
    )
    p.add_argument("--data", type=Path, required=True, help="dataset folder or datalist")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated (default: all: %(default)s)",
    )
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default: %(default)s)")
    p.add_argument(
        "--steps", type=int, help="training steps of every learned method (more extends runs)"
    )
    p.add_argument(
        "--config",
        type=Path,
        help="TOML/YAML/JSON with one table of settings per method, e.g. [fae] backbone = ...",
    )
    p.add_argument(
        "--precision",
        choices=options.PRECISION_CHOICES,
        help="every method's precision (default: auto, bf16 only for FAE where the hardware "
        "has it; a [method] table may set its own)",
    )
    options.add_split(p)
    p.add_argument(
        "--subjects",
        choices=["test", "select"],
        default="test",
        help="evaluate on the report patients (default) or on the selection patients "
        "(--select-fraction), whose summary goes to OUT/select",
    )
    p.add_argument("--device", default="auto")
    options.add_prep_options(p)
    p.set_defaults(func=benchmark)


def benchmark(args: argparse.Namespace) -> int:
    from fae.benchmark import format_markdown, run_benchmark
    from fae.config import read_config_file
    from fae.report import benchmark_report

    overrides = read_config_file(args.config) if args.config else {}
    loose = [k for k, v in overrides.items() if not isinstance(v, dict)]
    if loose:
        raise FaeInputError(
            args.config, f"settings must sit in per-method tables, not at the top: {loose[0]}"
        )
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.precision is not None:  # the flag overrides the config file
        overrides = {m: {**overrides.get(m, {}), "precision": args.precision} for m in methods}
    try:
        summary = run_benchmark(
            args.data,
            args.out,
            methods,
            args.seeds,
            args.modality,
            args.steps,
            overrides,
            options.prep_config(args),
            options.split(args),
            options.cache_dir(args),
            args.device,
            channels=options.channels(args),
            subjects=args.subjects,
        )
    except KeyboardInterrupt:
        print("fae: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    print(format_markdown(summary))
    where = args.out if args.subjects == "test" else args.out / args.subjects
    benchmark_report(args.out, where / "report.html", args.subjects)
    print(f"wrote {where / 'results.md'}, bars.png, pr_curves.png and report.html")
    return 0
