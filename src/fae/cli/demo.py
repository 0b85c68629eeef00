"""``fae demo``: the whole pipeline on synthetic brains, in minutes on a CPU."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fae.cli import options


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synthetic brains → FAE training → maps → metrics, figures")
    p.add_argument("--out", type=Path, default=Path("demo-output"))
    p.add_argument("--subjects", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="training steps (default: 1000)")
    p.add_argument(
        "--standardize-features",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="z-score feature channels (default: on; see fae train)",
    )
    p.add_argument(
        "--dark-weight",
        action="store_true",
        help="weight the maps by darkness as the best preset for T1 does (default: off; it "
        "halves the evidence of the demo's bright anomalies; see fae train)",
    )
    options.add_training_precision(p)
    p.set_defaults(func=demo)


def demo(args: argparse.Namespace) -> int:
    from fae.demo import run_demo

    try:
        run_demo(
            args.out,
            args.subjects,
            args.seed,
            args.steps,
            args.standardize_features,
            args.dark_weight,
            args.precision,
        )
    except KeyboardInterrupt:
        print("fae: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    return 0
