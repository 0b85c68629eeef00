"""``fae benchmark``: every method × every seed on one dataset, then the paper's comparison.

Each (method, seed) is an ordinary run folder, ``OUT/runs/<method>/seed<k>``, trained by the
run lifecycle of :mod:`fae.workflow` and evaluated on the run's test subjects into
``.../eval``. Finished runs are never redone, interrupted ones resume and a larger ``--steps``
extends them, so the command can be stopped and rerun.
The summary: ``results.csv``/``results.md``/``results.json`` with mean ± std over seeds, a
Welch t-test of FAE against every other method on each metric, ``bars.png`` (mean ± std per
metric and method, in the style of the paper's figure) and ``pr_curves.png``; on synthetic data
(``anomalies.csv``) also the metrics per anomaly kind.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from fae.data.preprocess import PrepConfig
from fae.errors import FaeInputError
from fae.io import atomic_path
from fae.methods.registry import METHODS, PROPOSED, method_class
from fae.workflow import RunSpec, evaluate_run, train_or_resume

METRICS = {
    "pixel_ap": "pixel AP",
    "dice_at_fpr": "Dice@5%FPR",
    "best_dice": "best Dice",
    "slice_auroc": "slice AUROC",
}
REFERENCE = PROPOSED  # every other method is t-tested against it


def run_benchmark(
    data: Path,
    out: Path,
    methods: list[str],
    seeds: int,
    modality: str | None = None,
    steps: int | None = None,
    overrides: dict[str, dict] | None = None,
    prep: PrepConfig = PrepConfig(),
    split: dict | None = None,
    cache_dir: Path | None = None,
    device: str = "auto",
    progress: bool = True,
    channels: list[str] | None = None,
    subjects: str = "test",
) -> dict:
    """Train and evaluate every method for seeds 0..seeds-1 (skipping finished runs, extending
    runs when ``steps`` grew); write and return the summary. ``overrides``: per-method settings
    (e.g. from a TOML table); ``split``: ``test_fraction``, ``val_fraction``, ``split_seed``,
    ``select_fraction``. ``subjects``: evaluate on the report patients (``"test"``: ``eval/`` in
    each run, the summary in ``out``) or on the selection patients (``"select"``:
    ``eval-select/``, the summary in ``out/select``)."""
    if subjects not in ("test", "select"):
        raise FaeInputError(None, f"--subjects must be test or select, got {subjects!r}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise FaeInputError(
            None, f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}"
        )
    if seeds < 1:
        raise FaeInputError(None, f"--seeds must be at least 1, got {seeds}")
    summary_dir = out if subjects == "test" else out / subjects
    runs: dict[str, list[dict]] = {method: [] for method in methods}
    for seed in range(seeds):  # seed by seed, so an early stop leaves every method comparable
        for method in methods:
            run = out / "runs" / method / f"seed{seed}"
            params = method_params(method, seed, steps, (overrides or {}).get(method, {}))
            spec = RunSpec(
                data, modality, method, params, prep, channels, **(split or {}), device=device
            )
            runs[method].append(_trained_and_evaluated(spec, run, subjects, cache_dir, progress))
        write_summary(summarize(runs), runs, summary_dir)  # partial tables while seeds run
    summary = summarize(runs)
    write_summary(summary, runs, summary_dir)
    folder = "eval" if subjects == "test" else f"eval-{subjects}"
    write_per_patient(
        {
            method: [
                _read_rows(out / "runs" / method / f"seed{s}" / folder / "per_subject.csv")
                for s in range(seeds)
            ]  # fmt: skip
            for method in methods
        },
        summary_dir,
    )
    return summary


def _read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _trained_and_evaluated(
    spec: RunSpec, run: Path, subjects: str, cache_dir: Path | None, progress: bool
) -> dict:
    """The metrics of one (method, seed) run on its ``subjects`` (test or select), training or
    evaluating only what is not done yet."""
    folder = run / ("eval" if subjects == "test" else f"eval-{subjects}")
    metrics_path = folder / "metrics.json"
    header = f"== {spec.method}, seed {spec.params['seed']}:"

    def announce(message: str) -> None:
        if progress:
            print(f"{header} {message}")

    est = train_or_resume(spec, run, cache_dir, progress, announce)
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        if metrics["steps"] == est.step_:
            return metrics
    announce(f"evaluating {run}")
    evaluate_run(run, spec.data, folder, subjects, cache_dir, spec.device, progress)
    return json.loads(metrics_path.read_text())


def method_params(method: str, seed: int, steps: int | None, overrides: dict) -> dict:
    """The settings of one run: the seed, the step budget (``settings_for_steps`` of the
    method) and the user's per-method overrides, which win."""
    steps = overrides.get("steps", steps)
    params: dict = {"seed": seed}
    if steps is not None:
        params.update(method_class(method).settings_for_steps(steps))
    params.update(overrides)
    return params


def summarize(runs: dict[str, list[dict]], reference: str = REFERENCE) -> dict:
    """Mean, std and per-seed values per method and metric; Welch's t-test of ``reference``
    (FAE unless told) against each other method (two-sided p-values; nan with fewer than two
    seeds or no variance)."""
    table: dict[str, dict] = {}
    for method, results in runs.items():
        row: dict = {"seeds": len(results)}
        for metric in METRICS:
            values = np.array([r[metric] for r in results], dtype=np.float64)
            row[metric] = {**mean_std(values), "values": values.tolist()}
        kinds = sorted({k for r in results for k in r.get("by_kind", {})})
        if kinds:
            row["by_kind"] = {
                kind: {
                    metric: mean_std(
                        [
                            r["by_kind"][kind][metric]
                            for r in results
                            if kind in r.get("by_kind", {})
                        ]
                    )
                    for metric in METRICS
                }
                for kind in kinds
            }
        table[method] = row
    return _add_welch(table, reference)


def merge_summaries(summaries: list[dict]) -> dict:
    """One summary from several (e.g. methods run on different machines): each method's row
    from the last summary that has it, Welch's tests against FAE redone on the per-seed values."""
    table: dict[str, dict] = {}
    for summary in summaries:
        for method, row in summary.items():
            table[method] = {k: v for k, v in row.items() if k != "welch_p"}
    return _add_welch(table)


def _add_welch(table: dict[str, dict], reference: str = REFERENCE) -> dict:
    if reference in table:
        for method, row in table.items():
            if method == reference:
                continue
            row["welch_p"] = {
                metric: _welch(table[reference][metric]["values"], row[metric]["values"])
                for metric in METRICS
            }
    return table


def mean_std(values) -> dict:
    """``{"mean", "std"}`` over seeds (the sample standard deviation; 0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}


def _welch(a: list[float], b: list[float]) -> float:
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return float("nan")
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def write_summary(summary: dict, runs: dict[str, list[dict]], out: Path) -> None:
    """results.csv / .md / .json, bars.png and pr_curves.png in ``out``."""
    write_tables(summary, out)
    save_pr_curves(runs, out / "pr_curves.png")


def write_tables(summary: dict, out: Path, reference: str = REFERENCE) -> None:
    """results.csv / .md / .json and bars.png in ``out`` (``reference``: the method that
    ``summarize`` tested against the others)."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    with atomic_path(out / "results.csv") as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["method", "seeds"]
            + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
            + [f"p_{m}" for m in METRICS]
        )
        for method, row in summary.items():
            p = row.get("welch_p", {})
            writer.writerow(
                [method, row["seeds"]]
                + [f"{row[m][s]:.6g}" for m in METRICS for s in ("mean", "std")]
                + [f"{p[m]:.3g}" if m in p else "" for m in METRICS]
            )
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(format_markdown(summary, reference))
    save_bars(summary, out / "bars.png")


def format_markdown(summary: dict, reference: str = REFERENCE) -> str:
    """Mean ± std per method (Welch p against ``reference`` in brackets), then per anomaly
    kind."""
    head = "| method | seeds | " + " | ".join(METRICS.values()) + " |"
    lines = [head, "|" + "---|" * (len(METRICS) + 2)]
    for method, row in summary.items():
        p = row.get("welch_p", {})
        cells = []
        for metric in METRICS:
            cell = f"{row[metric]['mean']:.3f} ± {row[metric]['std']:.3f}"
            if metric in p and not math.isnan(p[metric]):
                cell += f" (p={p[metric]:.2g})"
            cells.append(cell)
        lines.append(f"| {method} | {row['seeds']} | " + " | ".join(cells) + " |")
    kinds = sorted({k for row in summary.values() for k in row.get("by_kind", {})})
    if kinds:
        lines += ["", "Per anomaly kind (mean ± std over seeds):", ""]
        lines.append("| anomalies | method | " + " | ".join(METRICS.values()) + " |")
        lines.append("|" + "---|" * (len(METRICS) + 2))
        for kind in kinds:
            for method, row in summary.items():
                if kind not in row.get("by_kind", {}):
                    continue
                d = row["by_kind"][kind]
                cells = [f"{d[m]['mean']:.3f} ± {d[m]['std']:.3f}" for m in METRICS]
                lines.append(f"| {kind} | {method} | " + " | ".join(cells) + " |")
    lines.append("")
    who = "FAE" if reference == REFERENCE else reference
    lines.append(f"p: two-sided Welch t-test of {who} against the method, over seeds.")
    return "\n".join(lines) + "\n"


def save_bars(summary: dict, path: Path) -> Path:
    """``bars_figure`` as a PNG."""
    with atomic_path(path) as tmp:
        bars_figure(summary).savefig(tmp, format="png", dpi=110)
    return path


def bars_figure(summary: dict) -> Figure:
    """Grouped bars: one group per metric, one bar per method, error bars = std over seeds."""
    methods = list(summary)
    figure = Figure(figsize=(2.2 + 1.9 * len(METRICS), 3.6))
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    width = 0.8 / len(methods)
    cmap = method_colours(len(methods))
    for i, method in enumerate(methods):
        means = [summary[method][m]["mean"] for m in METRICS]
        stds = [summary[method][m]["std"] for m in METRICS]
        x = np.arange(len(METRICS)) + (i - (len(methods) - 1) / 2) * width
        ax.bar(x, means, width, yerr=stds, capsize=2, label=method, color=cmap[i])
    ax.set_xticks(np.arange(len(METRICS)), list(METRICS.values()))
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean ± std over seeds")
    ax.legend(fontsize=7, ncol=min(len(methods), 5), loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return figure


def save_pr_curves(runs: dict[str, list[dict]], path: Path) -> Path:
    """``pr_curves_figure`` as a PNG."""
    with atomic_path(path) as tmp:
        pr_curves_figure(runs).savefig(tmp, format="png", dpi=110)
    return path


def pr_curves_figure(runs: dict[str, list[dict]]) -> Figure:
    """Pixel precision-recall curves, mean over seeds (precision interpolated on a recall grid);
    ``runs``: each method's evaluation summaries (``metrics.json``), one per seed."""
    figure = Figure(figsize=(5.2, 4.2))
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    grid = np.linspace(0, 1, 101)
    cmap = method_colours(len(runs))
    for i, (method, results) in enumerate(runs.items()):
        curves = []
        for r in results:
            curve = r.get("pr_curve") or {}
            if curve.get("recall"):
                recall, precision = np.asarray(curve["recall"]), np.asarray(curve["precision"])
                curves.append(np.interp(grid, recall, precision))
        if curves:
            ap = np.mean([r["pixel_ap"] for r in results])
            ax.plot(grid, np.mean(curves, axis=0), color=cmap[i], label=f"{method} (AP {ap:.3f})")
    ax.set_xlabel("recall (lesion pixels)")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    figure.tight_layout()
    return figure


def write_per_patient(per_subject: dict[str, list[list[dict]]], out: Path) -> dict:
    """Each patient's Dice@5%FPR per method, mean over seeds, as ``per_patient.csv``,
    ``per_patient.md`` (:func:`per_patient_markdown`) and ``per_patient.png``
    (:func:`per_patient_figure`) in ``out``; returns method → array in
    the patients' order. ``per_subject``: per method, one list of per-patient rows
    (``subject``, ``lesion_pixels``, ``dice_at_fpr``, as in ``per_subject.csv``) per seed."""
    methods = list(per_subject)
    first = per_subject[methods[0]][0]
    patients = [row["subject"] for row in first]
    dice = {}
    for method, seeds in per_subject.items():
        by_seed = [{row["subject"]: float(row["dice_at_fpr"]) for row in rows} for rows in seeds]
        table = [[seed.get(p, np.nan) for seed in by_seed] for p in patients]
        dice[method] = np.nanmean(np.array(table, dtype=float), axis=1)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "per_patient.csv") as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["subject", "lesion_pixels", *methods])
        for i, row in enumerate(first):
            writer.writerow([row["subject"], row["lesion_pixels"],
                             *(f"{dice[m][i]:.4f}" for m in methods)])  # fmt: skip
    with atomic_path(out / "per_patient.md") as tmp:
        tmp.write_text(per_patient_markdown(dice))
    with atomic_path(out / "per_patient.png") as tmp:
        per_patient_figure(dice).savefig(tmp, format="png", dpi=110)
    return dice


MISSED = 0.01  # a patient whose Dice@5%FPR is below this counts as one where nothing was found


def per_patient_markdown(dice: dict[str, np.ndarray]) -> str:
    """Per method: the mean and median of the patients' Dice@5%FPR, and how many patients it
    finds (next to) nothing in. A pooled metric can hide that a few patients carry it."""
    lines = [
        f"| method | patients | mean | median | Dice < {MISSED} |",
        "|---|---|---|---|---|",
    ]
    for method, values in dice.items():
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        lines.append(f"| {method} | {len(v)} | {v.mean():.3f} | {np.median(v):.3f} | "
                     f"{int((v < MISSED).sum())} |")  # fmt: skip
    lines += ["", "Dice@5%FPR per patient, each the mean over seeds (per_patient.csv)."]
    return "\n".join(lines) + "\n"


def per_patient_figure(dice: dict[str, np.ndarray], label: str = "Dice@5%FPR") -> Figure:
    """One column per method: each patient's score (``dice[method]``, same patient order in
    every method) as a dot, over a box of quartiles; the line joins each patient's dots, so a
    method that wins on most patients shows as lines falling away from it."""
    methods = list(dice)
    figure = Figure(figsize=(1.6 + 0.9 * len(methods), 3.8))
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    values = np.array([np.asarray(dice[m], dtype=float) for m in methods])  # (methods, patients)
    x = np.arange(len(methods))
    ax.plot(x, values, color="0.8", linewidth=0.5, zorder=1)
    cmap = method_colours(len(methods))
    jitter = np.random.default_rng(0).uniform(-0.08, 0.08, values.shape[1])
    for i in range(len(methods)):
        finite = values[i][np.isfinite(values[i])]
        ax.boxplot([finite], positions=[i], widths=0.5, showfliers=False, zorder=2,
                   medianprops={"color": "black"})  # fmt: skip
        ax.scatter(i + jitter, values[i], s=9, color=cmap[i], zorder=3)
    ax.set_xticks(x, methods, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"{label} per patient")
    ax.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return figure


def method_colours(n: int) -> list:
    """One tab10 colour per method, in order: the same method keeps its colour in every figure."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]
