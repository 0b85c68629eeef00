"""One table from several ``benchmarks/protocol.py`` outputs: the training-time levers.

Each ``--results`` folder of protocol.py (``benchmarks/results/<name>``: the base settings, and
one per lever config in ``benchmarks/configs/levers/``) holds ``lgg-<modality>/curve.csv``;
this prints, for one modality, stage (or every stage: the learning curve) and patient set (the
selection patients by default: levers are chosen there), the mean ± std over seeds of each
method of each:

    .venv/bin/python benchmarks/compare_levers.py --modality t1 --steps 1000 benchmarks/results/*
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from fae.benchmark import METRICS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outs", type=Path, nargs="+")
    parser.add_argument("--modality", choices=["t1", "flair"], required=True)
    parser.add_argument("--steps", type=int, help="one stage (default: every stage: the curve)")
    parser.add_argument("--subjects", choices=["select", "test"], default="select")
    args = parser.parse_args()
    stage = f"{args.steps} steps" if args.steps else "every stage"
    print(f"LGG {args.modality}, {args.subjects} patients, {stage} (mean ± std):\n")
    print("| settings | method | steps | seeds | " + " | ".join(METRICS.values()) + " |")
    print("|" + "---|" * (len(METRICS) + 4))
    for out in args.outs:
        path = out / f"lgg-{args.modality}" / "curve.csv"
        if not path.exists():
            continue
        groups: dict[tuple[str, int], list[dict]] = {}
        with path.open(newline="") as fh:
            for r in csv.DictReader(fh):
                if r["subjects"] == args.subjects and args.steps in (None, int(r["steps"])):
                    groups.setdefault((r["method"], int(r["steps"])), []).append(r)
        for (method, steps), rows in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1])):
            cells = []
            for metric in METRICS:
                values = np.array([float(r[metric]) for r in rows])
                std = values.std(ddof=1) if len(values) > 1 else 0.0
                cells.append(f"{values.mean():.3f} ± {std:.3f}")
            print(f"| {out.name} | {method} | {steps} | {len(rows)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
