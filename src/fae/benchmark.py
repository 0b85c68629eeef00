"""``fae benchmark``: every method × every seed on one dataset, then the paper's comparison.

Each (method, seed) is an ordinary run folder, ``OUT/runs/<method>/seed<k>``, trained with
``fae train``'s machinery and evaluated on the run's test subjects into ``.../eval``. Finished
runs are never redone and interrupted ones resume, so the command can be stopped and rerun.
The summary: ``results.csv``/``results.md``/``results.json`` with mean ± std over seeds, a
Welch t-test of FAE against every other method on each metric, ``bars.png`` (mean ± std per
metric and method, in the style of the paper's figure) and ``pr_curves.png``; on synthetic data
(``anomalies.csv``) also the metrics per anomaly kind.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from fae.checkpoint import load_checkpoint
from fae.data.preprocess import PrepConfig
from fae.errors import FaeInputError
from fae.io import atomic_path
from fae.methods.registry import METHODS, method_class
from fae.workflow import evaluate_run, resume_run, train_run

METRICS = {
    "pixel_ap": "pixel AP",
    "dice_at_fpr": "Dice@5%FPR",
    "best_dice": "best Dice",
    "slice_auroc": "slice AUROC",
}
REFERENCE = "fae"


def run_benchmark(
    data: Path,
    out: Path,
    methods: list[str],
    seeds: int,
    modality: str,
    steps: int | None = None,
    overrides: dict[str, dict] | None = None,
    prep: PrepConfig = PrepConfig(),
    split: dict | None = None,
    cache_dir: Path | None = None,
    device: str = "auto",
    progress: bool = True,
    channels: list[str] | None = None,
) -> dict:
    """Train and evaluate every method for seeds 0..seeds-1 (skipping finished runs); write
    and return the summary. ``overrides``: per-method settings (e.g. from a TOML table)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise FaeInputError(
            None, f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}"
        )
    if seeds < 1:
        raise FaeInputError(None, f"--seeds must be at least 1, got {seeds}")
    split = split or {}
    setup = {
        "data": data,
        "modality": modality,
        "prep": prep,
        "channels": channels,
        "test_fraction": split.get("test_fraction", 0.5),
        "val_fraction": split.get("val_fraction", 0.1),
        "split_seed": split.get("split_seed", 0),
        "cache_dir": cache_dir,
        "device": device,
        "progress": progress,
    }
    runs: dict[str, list[dict]] = {method: [] for method in methods}
    for seed in range(seeds):  # seed by seed, so an early stop leaves every method comparable
        for method in methods:
            run = out / "runs" / method / f"seed{seed}"
            metrics_path = run / "eval" / "metrics.json"
            params = method_params(method, seed, steps, (overrides or {}).get(method, {}))
            _check_same_settings(run, method, params, prep)
            if not metrics_path.exists():
                if progress:
                    print(f"== {method}, seed {seed}: {run}")
                _train_or_resume(run, method, params, setup)
                evaluate_run(run, data, run / "eval", "test", cache_dir, device, progress)
            runs[method].append(json.loads(metrics_path.read_text()))
        write_summary(summarize(runs), runs, out)  # partial tables while later seeds run
    summary = summarize(runs)
    write_summary(summary, runs, out)
    return summary


def method_params(method: str, seed: int, steps: int | None, overrides: dict) -> dict:
    """The settings of one run: the seed, the step budget (f-AnoGAN spends half of it on the
    GAN, half on the encoder) and the user's per-method overrides, which win."""
    params: dict = {"seed": seed}
    if steps is not None and method_class(method).learns:
        params["steps"] = steps
    params.update(overrides)
    if method == "fanogan" and "steps" in params and "gan_steps" not in overrides:
        params["gan_steps"] = max(1, params["steps"] // 2)
    return params


def _check_same_settings(run: Path, method: str, params: dict, prep: PrepConfig) -> None:
    """A run folder from an earlier invocation must have the settings asked for now, and come
    from this version of the method (every setting it has now was saved)."""
    path = run / "config.json"
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    model = saved.get("model", {})
    fields = {f.name for f in dataclasses.fields(method_class(method).config_class)}
    missing = sorted(fields - set(model))
    if missing:
        raise FaeInputError(
            run, f"comes from an older {method} (no {', '.join(missing)}): use another --out"
        )
    for key, value in params.items():
        if model.get(key) != value:
            raise FaeInputError(
                run, f"was run with {key}={model.get(key)!r}, not {value!r}: use another --out"
            )
    if saved.get("prep") != prep.to_dict():
        raise FaeInputError(run, "was run with other preprocessing: use another --out")


def _train_or_resume(run: Path, method: str, params: dict, setup: dict) -> None:
    """Train the run, or resume it, or nothing if it is finished (trained and calibrated)."""
    checkpoint = run / "checkpoint.pt"
    if checkpoint.exists():
        payload = load_checkpoint(checkpoint)
        learns = method_class(payload.get("kind", method)).learns
        if "calibration" in payload and (
            not learns or payload["step"] >= payload["config"]["steps"]
        ):
            return
        if "train_state" not in payload:
            raise FaeInputError(checkpoint, "unfinished run without training state: delete it")
        resume_run(run, setup["cache_dir"], setup["progress"], setup["device"])
        return
    train_run(
        setup["data"],
        run,
        setup["modality"],
        params,
        setup["prep"],
        setup["channels"],
        setup["test_fraction"],
        setup["val_fraction"],
        setup["split_seed"],
        cache_dir=setup["cache_dir"],
        device=setup["device"],
        progress=setup["progress"],
        method=method,
    )


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Mean, std and per-seed values per method and metric; Welch's t-test of FAE against each
    other method (two-sided p-values; nan with fewer than two seeds or no variance)."""
    table: dict[str, dict] = {}
    for method, results in runs.items():
        row: dict = {"seeds": len(results)}
        for metric in METRICS:
            values = np.array([r[metric] for r in results], dtype=np.float64)
            row[metric] = {
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "values": values.tolist(),
            }
        kinds = sorted({k for r in results for k in r.get("by_kind", {})})
        if kinds:
            row["by_kind"] = {
                kind: {
                    metric: _mean_std(
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
    return _add_welch(table)


def merge_summaries(summaries: list[dict]) -> dict:
    """One summary from several (e.g. methods run on different machines): each method's row
    from the last summary that has it, Welch's tests against FAE redone on the per-seed values."""
    table: dict[str, dict] = {}
    for summary in summaries:
        for method, row in summary.items():
            table[method] = {k: v for k, v in row.items() if k != "welch_p_vs_fae"}
    return _add_welch(table)


def _add_welch(table: dict[str, dict]) -> dict:
    if REFERENCE in table:
        for method, row in table.items():
            if method == REFERENCE:
                continue
            row["welch_p_vs_fae"] = {
                metric: _welch(table[REFERENCE][metric]["values"], row[metric]["values"])
                for metric in METRICS
            }
    return table


def _mean_std(values: list[float]) -> dict:
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


def write_tables(summary: dict, out: Path) -> None:
    """results.csv / .md / .json and bars.png in ``out``."""
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
            p = row.get("welch_p_vs_fae", {})
            writer.writerow(
                [method, row["seeds"]]
                + [f"{row[m][s]:.6g}" for m in METRICS for s in ("mean", "std")]
                + [f"{p[m]:.3g}" if m in p else "" for m in METRICS]
            )
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(format_markdown(summary))
    save_bars(summary, out / "bars.png")


def format_markdown(summary: dict) -> str:
    """Mean ± std per method (Welch p against FAE in brackets), then per anomaly kind."""
    head = "| method | seeds | " + " | ".join(METRICS.values()) + " |"
    lines = [head, "|" + "---|" * (len(METRICS) + 2)]
    for method, row in summary.items():
        p = row.get("welch_p_vs_fae", {})
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
    lines.append("p: two-sided Welch t-test of FAE against the method, over seeds.")
    return "\n".join(lines) + "\n"


def save_bars(summary: dict, path: Path) -> Path:
    """Grouped bars: one group per metric, one bar per method, error bars = std over seeds."""
    methods = list(summary)
    figure = Figure(figsize=(2.2 + 1.9 * len(METRICS), 3.6))
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    width = 0.8 / len(methods)
    cmap = _colours(len(methods))
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
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    return path


def save_pr_curves(runs: dict[str, list[dict]], path: Path) -> Path:
    """Pixel precision-recall curves, mean over seeds (precision interpolated on a recall grid)."""
    figure = Figure(figsize=(5.2, 4.2))
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    grid = np.linspace(0, 1, 101)
    cmap = _colours(len(runs))
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
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    return path


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]
