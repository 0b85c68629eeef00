"""One table from several ``benchmarks/protocol.py`` outputs: the training-time levers.

Each ``--results`` folder of protocol.py (``benchmarks/results/<name>``: the base settings, and
one per lever config in ``benchmarks/configs/levers/``) holds ``lgg-<modality>/curve.csv``;
this prints, for one modality, stage (or every stage: the learning curve) and patient set (the
selection patients by default: levers are chosen there), the mean ± std over seeds of each
method of each:

    .venv/bin/python benchmarks/compare_levers.py --modality t1 --steps 1000 benchmarks/results/*

``--plot FILE`` also draws the learning curve: validation loss and each metric against the
training steps, one line per method in the same colour in every panel (mean over the seeds that
every stage of it has, so that each line follows the same runs; ± std shaded).
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fae.benchmark import METRICS, method_colours
from fae.io import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LEGEND_COLUMNS = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outs", type=Path, nargs="+")
    parser.add_argument("--modality", choices=["t1", "flair"], required=True)
    parser.add_argument("--steps", type=int, help="one stage (default: every stage: the curve)")
    parser.add_argument("--subjects", choices=["select", "test"], default="select")
    parser.add_argument("--plot", type=Path, help="a PNG of the learning curve")
    args = parser.parse_args()
    curves: dict[str, dict[int, list[dict]]] = {}
    stage = f"{args.steps} steps" if args.steps else "every stage"
    print(f"LGG {args.modality}, {args.subjects} patients, {stage} (mean ± std):\n")
    columns = {"val_loss": "validation loss", **METRICS}
    print("| settings | method | steps | seeds | " + " | ".join(columns.values()) + " |")
    print("|" + "---|" * (len(columns) + 4))
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
            for metric in columns:
                if not all(r[metric] for r in rows):  # a method without training
                    cells.append("–")
                    continue
                values = np.array([float(r[metric]) for r in rows])
                std = values.std(ddof=1) if len(values) > 1 else 0.0
                cells.append(f"{values.mean():.3f} ± {std:.3f}")
            print(f"| {out.name} | {method} | {steps} | {len(rows)} | " + " | ".join(cells) + " |")
            curves.setdefault(f"{out.name}: {method}", {})[steps] = rows
    if args.plot:
        plot_curves(curves, args.plot, f"LGG {args.modality}, {args.subjects} patients")


def _series(
    stages: dict[int, list[dict]], key: str
) -> tuple[list[int], np.ndarray, np.ndarray] | None:
    """Steps, mean and std of ``key`` over the seeds that every stage with it has; None where
    there is no curve (fewer than two stages, or no seed common to them)."""
    steps = sorted(s for s, rows in stages.items() if all(r[key] for r in rows))
    if len(steps) < 2:
        return None
    seeds = set.intersection(*({r["seed"] for r in stages[s]} for s in steps))
    if not seeds:
        return None
    values = [np.array([float(r[key]) for r in stages[s] if r["seed"] in seeds]) for s in steps]
    mean = np.array([v.mean() for v in values])
    std = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in values])
    return steps, mean, std


def draw_curves(curves: dict[str, dict[int, list[dict]]], title: str) -> Figure:
    """Validation loss (methods that have one) and every metric against the training steps, one
    colour per curve in every panel and one legend for the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {"val_loss": "validation loss (healthy slices)", **METRICS}
    series = {
        label: {key: _series(stages, key) for key in panels} for label, stages in curves.items()
    }
    labels = [label for label, by_key in series.items() if any(by_key.values())]
    colours = dict(zip(labels, method_colours(len(labels)), strict=True))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    handles = {}
    for ax, (key, name) in zip(axes, panels.items(), strict=True):
        for label in labels:
            if series[label][key] is None:
                continue
            steps, mean, std = series[label][key]
            (handles[label],) = ax.plot(steps, mean, marker="o", color=colours[label])
            ax.fill_between(steps, mean - std, mean + std, color=colours[label], alpha=0.2)
        ax.set_title(name)
        ax.set_xlabel("training steps")
    fig.legend([handles[label] for label in labels], labels, loc="lower center",
               ncol=min(len(labels), LEGEND_COLUMNS), fontsize=8)  # fmt: skip
    fig.suptitle(title)
    legend_rows = math.ceil(len(labels) / LEGEND_COLUMNS)
    fig.tight_layout(rect=(0, 0.06 * legend_rows, 1, 1))  # room for the legend below
    return fig


def plot_curves(curves: dict[str, dict[int, list[dict]]], path: Path, title: str) -> None:
    """:func:`draw_curves` as a PNG, written atomically."""
    import matplotlib.pyplot as plt

    fig = draw_curves(curves, title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
