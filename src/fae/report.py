"""``fae report``: one self-contained HTML page of a run, or of a whole benchmark.

What a person needs to see what a model does, in one file that opens from disk: the run's
settings and data, its training curve, its calibrated thresholds, the metrics (beside a
benchmark's other methods when given), precision-recall curves, and a slice browser: every
evaluated or predicted scan, slice by slice, with the anomaly map over the image on the run's
one colour scale (from its healthy threshold up, :meth:`AnomalyMethod.display_range`) and the
ground-truth outline where there is one. Pictures are PNG data URIs and the browser is a few
lines of plain JavaScript: no network, nothing beside the file.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from scipy import ndimage

from fae import __version__
from fae.benchmark import METRICS, bars_figure, pr_curves_figure
from fae.data.slices import SliceSet
from fae.data.volume import load_nifti
from fae.errors import FaeInputError
from fae.evaluation import SLICE_MAPS, load_slice_maps
from fae.io import atomic_path
from fae.methods.base import AnomalyMethod, load_method
from fae.viz import grey_range, map_colours

TRUTH_RGB = (0, 230, 255)  # the ground-truth outline: cyan, apart from the maps' red-yellow
EXTRA_METRICS = {"slice_ap": "slice AP", "pixel_auroc": "pixel AUROC"}


@dataclass
class Panel:
    """One map in the slice browser: a method's, on its run's colour scale."""

    name: str
    vmin: float
    vmax: float


@dataclass
class BrowsedScan:
    """One scan of the slice browser: per slice a label, the image, the ground-truth outline
    (or None) and one overlay per panel (PNG data URIs)."""

    name: str
    labels: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    truth: list[str | None] = field(default_factory=list)
    overlays: list[list[str]] = field(default_factory=list)
    start: int = 0


# --- the two reports ------------------------------------------------------------------------


def run_report(
    run: Path,
    out: Path,
    eval_dir: Path | None = None,
    pred_dir: Path | None = None,
    benchmark_dir: Path | None = None,
    fpr: float = 0.05,
) -> Path:
    """Write the report of one run (``fae report RUN``) to ``out``: settings, training curve,
    thresholds, then what ``eval_dir`` (``fae evaluate``'s folder), ``pred_dir`` (``fae
    predict``'s) and ``benchmark_dir`` (a ``fae benchmark`` folder, for its other methods) hold."""
    est = load_method(run, device="cpu", progress=False)
    run_dir = run if run.is_dir() else run.parent
    panel = Panel(est.name, *est.display_range(fpr))
    sections = [_settings(est, run_dir), _training_curve(run_dir), _thresholds({est.name: est})]
    scans: list[BrowsedScan] = []
    if benchmark_dir is not None:
        sections += _benchmark_tables(benchmark_dir, "test")
    if eval_dir is not None:
        metrics = _read_json(eval_dir / "metrics.json")
        sections.append(_metrics(metrics, _read_csv(eval_dir / "per_subject.csv")))
        if benchmark_dir is None:
            sections.append(
                _figure("Pixel precision-recall", pr_curves_figure({est.name: [metrics]}))
            )
        slices, maps = load_slice_maps(_need(eval_dir / SLICE_MAPS))
        scans += scans_from_slices(slices, [maps], [panel])
    if pred_dir is not None:
        rows = _read_csv(_need(pred_dir / "scores.csv"))
        sections.append(_predictions(rows))
        scans += scans_from_predictions(pred_dir, rows, panel)
    if scans:
        sections.append(_browser(scans))
    title = f"fae report: {run_dir.name} ({est.name}, {est.meta.get('modality', '')})"
    return _write(out, title, sections, scans, [panel])


def benchmark_report(bench_dir: Path, out: Path, subjects: str = "test") -> Path:
    """Write the report of a whole ``fae benchmark`` folder to ``out``: the comparison table
    with Welch p-values, the bar chart, precision-recall curves, per-patient Dice, each
    method's settings and thresholds, and the slice browser with every method's map (seed 0)
    side by side, each on its own run's colour scale."""
    eval_name = "eval" if subjects == "test" else f"eval-{subjects}"
    seed0 = {m: bench_dir / "runs" / m / "seed0" for m in _methods(bench_dir, subjects)}
    estimators = {m: load_method(run, device="cpu", progress=False) for m, run in seed0.items()}
    sections = _benchmark_tables(bench_dir, subjects)
    sections.append(_per_patient(bench_dir, eval_name, list(seed0)))
    sections.append(_thresholds(estimators))
    sections.append(
        "<section><h2>Settings</h2>"
        + "".join(
            f"<details><summary>{html.escape(m)}</summary>{_settings_table(est)}</details>"
            for m, est in estimators.items()
        )
        + "</section>"
    )
    panels, maps, reference = [], [], None
    for method, run in seed0.items():
        path = run / eval_name / SLICE_MAPS
        if not path.exists():
            continue
        slices, method_maps = load_slice_maps(path)
        if reference is None:
            reference = slices
        elif not _same_slices(reference, slices):
            continue
        panels.append(Panel(method, *estimators[method].display_range()))
        maps.append(method_maps)
    scans = scans_from_slices(reference, maps, panels) if reference is not None else []
    if scans:
        sections.append(_browser(scans))
    title = f"fae benchmark: {bench_dir.name} ({subjects} patients)"
    return _write(out, title, sections, scans, panels)


# --- slices to frames -----------------------------------------------------------------------


def scans_from_slices(
    slices: SliceSet, maps: Sequence[np.ndarray], panels: Sequence[Panel]
) -> list[BrowsedScan]:
    """Browser frames of prepared slices (an evaluation's), one scan per subject in axial
    order; each scan opens on its slice with the most lesion (else the most flagged)."""
    scans = []
    for i, name in enumerate(slices.subject_ids):
        rows = np.flatnonzero(slices.subject == i)
        if rows.size == 0:
            continue
        rows = rows[np.argsort(slices.slice_index[rows], kind="stable")]
        scan = BrowsedScan(f"{name} (evaluated)", overlays=[[] for _ in panels])
        for k in rows:
            image = np.rot90(slices.images[k])
            scan.labels.append(f"z={slices.slice_index[k]}")
            scan.images.append(_png(np.round(image * 255).astype(np.uint8)))
            scan.truth.append(_outline(np.rot90(slices.segs[k])))
            for p, (panel, m) in enumerate(zip(panels, maps, strict=True)):
                scan.overlays[p].append(_overlay(np.rot90(m[k]), np.rot90(slices.masks[k]), panel))
        lesion = slices.segs[rows].sum(axis=(1, 2))
        flagged = (maps[0][rows] >= panels[0].vmin).sum(axis=(1, 2)) if maps else lesion
        scan.start = int(np.argmax(lesion if lesion.any() else flagged))
        scans.append(scan)
    return scans


def scans_from_predictions(pred_dir: Path, rows: list[dict], panel: Panel) -> list[BrowsedScan]:
    """Browser frames of ``fae predict``'s outputs, in each scan's own space (RAS, axial), the
    source image beneath where it can still be read; the slices with brain in them."""
    scans = []
    for row in rows:
        name = row["name"]
        amap = load_nifti(pred_dir / f"{name}_anomaly.nii.gz")
        brain = load_nifti(pred_dir / f"{name}_brainmask.nii.gz").data > 0
        source = Path(row["source"])
        image = (
            load_nifti(source).data
            if source.suffix in (".nii", ".gz") and source.is_file()
            else None
        )
        if image is None or image.shape != amap.data.shape:
            image = np.zeros_like(amap.data)
        ornt = nib.orientations.io_orientation(amap.affine)
        image, values, brain = (
            nib.orientations.apply_orientation(a, ornt) for a in (image, amap.data, brain)
        )
        low, high = grey_range(np.where(brain, image, 0))
        scan = BrowsedScan(f"{name} (predicted)", overlays=[[]])
        kept = [z for z in range(values.shape[2]) if brain[:, :, z].any()]
        for z in kept:
            grey = np.clip((image[:, :, z] - low) / (high - low), 0, 1)
            scan.labels.append(f"z={z}")
            scan.images.append(_png(np.round(np.rot90(grey) * 255).astype(np.uint8)))
            scan.truth.append(None)
            scan.overlays[0].append(
                _overlay(np.rot90(values[:, :, z]), np.rot90(brain[:, :, z]), panel)
            )
        if kept:
            flagged = [(values[:, :, z] >= panel.vmin).sum() for z in kept]
            scan.start = int(np.argmax(flagged))
            scans.append(scan)
    return scans


def _png(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _overlay(amap: np.ndarray, brain: np.ndarray, panel: Panel) -> str:
    """The map where it reaches the panel's threshold inside the brain, in colour; transparent
    elsewhere."""
    colour, shown = map_colours(amap, panel.vmin, panel.vmax)
    rgba = np.zeros((*amap.shape, 4), np.uint8)
    rgba[..., :3] = np.round(colour * 255)
    rgba[..., 3] = np.where(shown & brain, 255, 0)
    return _png(rgba)


def _outline(seg: np.ndarray) -> str | None:
    if not seg.any():
        return None
    edge = seg & ~ndimage.binary_erosion(seg)
    rgba = np.zeros((*seg.shape, 4), np.uint8)
    rgba[edge] = (*TRUTH_RGB, 255)
    return _png(rgba)


def _same_slices(a: SliceSet, b: SliceSet) -> bool:
    return (
        a.subject_ids == b.subject_ids
        and np.array_equal(a.subject, b.subject)
        and np.array_equal(a.slice_index, b.slice_index)
    )


# --- sections -------------------------------------------------------------------------------


def _settings(est: AnomalyMethod, run_dir: Path) -> str:
    meta = est.meta
    splits = meta.get("splits", {})
    facts = {
        "run": str(run_dir),
        "method": est.name,
        "trained steps": est.step_,
        "modality": meta.get("modality", ""),
        "data": meta.get("data", ""),
        "subjects": ", ".join(f"{k} {len(v)}" for k, v in splits.items()),
    }
    return (
        "<section><h2>Run</h2>"
        + _table(["", ""], [[k, v] for k, v in facts.items()], header=False)
        + f"<details><summary>every setting</summary>{_settings_table(est)}</details></section>"
    )


def _settings_table(est: AnomalyMethod) -> str:
    record = est.describe()
    rows = [[f"config.{k}", v] for k, v in record["config"].items()]
    rows += [[f"prep.{k}", v] for k, v in record["prep"].items()]
    return _table(["setting", "value"], rows)


def _training_curve(run_dir: Path) -> str:
    path = run_dir / "train_log.csv"
    rows = _read_csv(path) if path.exists() else []
    steps = [int(r["step"]) for r in rows if r.get("loss")]
    if not steps:
        return "<section><h2>Training</h2><p>This method does not train.</p></section>"
    figure = Figure(figsize=(6.4, 3.2))
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    ax.plot(steps, [float(r["loss"]) for r in rows if r.get("loss")], lw=0.8, label="loss")
    val = [(int(r["step"]), float(r["val_loss"])) for r in rows if r.get("val_loss")]
    if val:
        ax.plot(*zip(*val, strict=True), "o-", ms=3, label="validation loss (healthy slices)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return _figure("Training", figure)


def _thresholds(estimators: dict[str, AnomalyMethod]) -> str:
    rows = []
    for name, est in estimators.items():
        calibration = getattr(est, "calibration_", None) or {}
        for fpr, pixel in calibration.get("pixel", {}).items():
            rows.append(
                [name, fpr, f"{pixel:.5g}", f"{calibration['slice'][fpr]:.5g}",
                 calibration.get("source", ""), calibration.get("n_slices", "")]
            )  # fmt: skip
    head = ["method", "false-positive rate", "pixel threshold", "slice threshold",
            "calibrated on", "healthy slices"]  # fmt: skip
    return (
        "<section><h2>Calibrated thresholds</h2><p>Lowest map value (slice score) that at most "
        "the given share of healthy brain pixels (slices) reach; maps are drawn from the "
        "pixel threshold at 5 % up.</p>" + _table(head, rows) + "</section>"
    )


def _metrics(metrics: dict, per_subject: list[dict]) -> str:
    names = {**METRICS, **EXTRA_METRICS}
    rows = [[label, f"{metrics[k]:.4f}"] for k, label in names.items() if k in metrics]
    rows += [[k.replace("_", " "), metrics[k]] for k in ("n_subjects", "n_slices", "steps")]
    subjects = sorted(per_subject, key=lambda r: -_number(r["dice_at_fpr"]))
    head = ["subject", "slices", "lesion slices", "lesion pixels", "Dice@5%FPR"]
    table = [
        [r["subject"], r["slices"], r["lesion_slices"], r["lesion_pixels"],
         f"{_number(r['dice_at_fpr']):.3f}"]
        for r in subjects
    ]  # fmt: skip
    return (
        f"<section><h2>Metrics</h2><p>On {html.escape(str(metrics.get('data', '')))}.</p>"
        + _table(["metric", "value"], rows, header=False)
        + "<details><summary>per subject</summary>"
        + _table(head, table)
        + "</details></section>"
    )


def _predictions(rows: list[dict]) -> str:
    head = [
        "scan",
        "scan score",
        "suspicious voxels",
        "suspicious slices",
        "brain (ml)",
        "warnings",
    ]
    table = [
        [r["name"], f"{_number(r['scan_score']):.4g}", r["suspicious_voxels"],
         f"{r['suspicious_slices']} / {r['slices']}", r["brain_ml"], r["warnings"]]
        for r in rows
    ]  # fmt: skip
    return "<section><h2>Predicted scans</h2>" + _table(head, table) + "</section>"


def _benchmark_tables(bench_dir: Path, subjects: str) -> list[str]:
    """The comparison table (mean ± std, Welch p against FAE), bars and PR curves."""
    summary_dir = bench_dir if subjects == "test" else bench_dir / subjects
    summary = _read_json(summary_dir / "results.json")
    head = ["method", "seeds", *METRICS.values()]
    rows = []
    for method, row in summary.items():
        cells = []
        for metric in METRICS:
            cell = f"{row[metric]['mean']:.3f} ± {row[metric]['std']:.3f}"
            p = row.get("welch_p", {}).get(metric)
            if p is not None and np.isfinite(p):
                cell += f" (p={p:.2g})"
            cells.append(cell)
        rows.append([method, row["seeds"], *cells])
    eval_name = "eval" if subjects == "test" else f"eval-{subjects}"
    runs = {
        m: [
            _read_json(p)
            for p in sorted((bench_dir / "runs" / m).glob(f"seed*/{eval_name}/metrics.json"))
        ]
        for m in summary
    }
    return [
        "<section><h2>Comparison</h2><p>Mean ± std over seeds; p: two-sided Welch t-test of FAE "
        f"against the method ({html.escape(subjects)} patients).</p>"
        + _table(head, rows)
        + "</section>",
        _figure("Metrics by method", bars_figure(summary)),
        _figure("Pixel precision-recall", pr_curves_figure(runs)),
    ]


def _per_patient(bench_dir: Path, eval_name: str, methods: list[str]) -> str:
    """Dice at the 5 %-FPR threshold per patient and method, mean over seeds."""
    dice: dict[str, dict[str, list[float]]] = {}
    for method in methods:
        for path in sorted(
            (bench_dir / "runs" / method).glob(f"seed*/{eval_name}/per_subject.csv")
        ):
            for row in _read_csv(path):
                dice.setdefault(row["subject"], {}).setdefault(method, []).append(
                    _number(row["dice_at_fpr"])
                )
    rows = [
        [subject, *(f"{np.mean(by[m]):.3f}" if m in by else "" for m in methods)]
        for subject, by in dice.items()
    ]
    return (
        "<section><h2>Per-patient Dice@5%FPR</h2><p>Mean over seeds.</p><details><summary>"
        f"{len(rows)} patients</summary>"
        + _table(["patient", *methods], rows)
        + "</details></section>"
    )


def _browser(scans: list[BrowsedScan]) -> str:
    options = "".join(
        f'<option value="{i}">{html.escape(s.name)}</option>' for i, s in enumerate(scans)
    )
    return f"""<section id="browser"><h2>Slices</h2>
<div class="controls">
<label>scan <select id="scan">{options}</select></label>
<label>slice <input type="range" id="slice" min="0" max="0" value="0"></label>
<span id="where"></span>
<label><input type="checkbox" id="show-map" checked> map</label>
<label>opacity <input type="range" id="opacity" min="0" max="100" value="75"></label>
<label><input type="checkbox" id="show-truth" checked> ground truth</label>
</div>
<div id="panels"></div>
<p class="hint">Keys: ← → (or ↑ ↓) previous / next slice, Page Up / Page Down previous / next
scan. Each map is shown where it reaches its run's calibrated pixel threshold at 5 % FPR, on
one colour scale per method for every scan; the ground truth is outlined in cyan.</p>
</section>"""


def _figure(title: str, figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    name = html.escape(title)
    return f'<section><h2>{name}</h2><img class="figure" alt="{name}" src="{uri}"></section>'


def _table(head: list[str], rows: list[list], header: bool = True) -> str:
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    top = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" if header else ""
    return f"<table>{top}{cells}</table>"


# --- the page -------------------------------------------------------------------------------


def _write(
    out: Path, title: str, sections: list[str], scans: list[BrowsedScan], panels: list[Panel]
) -> Path:
    data = {
        "panels": [vars(p) for p in panels],
        "scans": [vars(s) for s in scans],
    }
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        _PAGE.replace("__TITLE__", html.escape(title))
        .replace("__STAMP__", f"fae {__version__}, {stamp}")
        .replace("__BODY__", "\n".join(sections))
        .replace("__DATA__", payload)
    )
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out


def _methods(bench_dir: Path, subjects: str) -> list[str]:
    summary_dir = bench_dir if subjects == "test" else bench_dir / subjects
    methods = list(_read_json(summary_dir / "results.json"))
    missing = [m for m in methods if not (bench_dir / "runs" / m / "seed0").is_dir()]
    if missing:
        raise FaeInputError(bench_dir / "runs", f"no seed-0 run of {', '.join(missing)}")
    return methods


def _need(path: Path) -> Path:
    if not path.exists():
        raise FaeInputError(
            path, "not found (run fae evaluate / fae predict into that folder first)"
        )
    return path


def _read_json(path: Path) -> dict:
    try:
        return json.loads(_need(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FaeInputError(path, f"cannot read ({err})") from None


def _read_csv(path: Path) -> list[dict]:
    try:
        with path.open(newline="") as fh:
            return list(csv.DictReader(fh))
    except OSError as err:
        raise FaeInputError(path, f"cannot read ({err.strerror or err})") from None


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return float("nan")


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>__TITLE__</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: left; }
th { background: #f2f2f2; }
img.figure { max-width: 100%; }
.stamp { color: #777; font-size: 12px; }
#browser { background: #111; color: #eee; padding: 0.8em 1em 0.5em; border-radius: 6px; }
#browser h2 { margin-top: 0; }
.controls { display: flex; flex-wrap: wrap; gap: 1em; align-items: center; margin-bottom: 0.6em; }
.controls input[type=range]#slice { width: 260px; }
#panels { display: flex; flex-wrap: wrap; gap: 12px; }
.panel { width: 270px; }
.panel .name { font-weight: 600; margin-bottom: 3px; }
.stack { position: relative; width: 100%; background: #000; }
.stack img { display: block; width: 100%; }
.stack img.layer { position: absolute; left: 0; top: 0; }
.scale { display: flex; justify-content: space-between; font-size: 11px; margin-top: 3px; }
.bar { height: 8px; background: linear-gradient(to right, #ff0000, #ffff00); }
.hint { color: #aaa; font-size: 12px; }
</style></head>
<body>
<h1>__TITLE__</h1>
<p class="stamp">__STAMP__</p>
__BODY__
<script id="report-data" type="application/json">__DATA__</script>
<script>
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("report-data").textContent);
  if (!data.scans.length) { return; }
  const $ = (id) => document.getElementById(id);
  const scanSelect = $("scan"), slider = $("slice"), where = $("where");
  const showMap = $("show-map"), opacity = $("opacity"), showTruth = $("show-truth");
  // the image on its own first, then one panel per map
  const panels = [null, ...data.panels].map((panel, i) => {
    const box = document.createElement("div");
    box.className = "panel";
    box.innerHTML = '<div class="name"></div><div class="stack"><img class="base" alt="slice">' +
      '<img class="layer map" alt=""><img class="layer truth" alt=""></div>' +
      '<div class="bar"></div><div class="scale"><span></span><span></span></div>';
    box.querySelector(".name").textContent = panel ? panel.name : "image";
    const ends = box.querySelectorAll(".scale span");
    if (panel) {
      ends[0].textContent = panel.vmin.toPrecision(3) + " (threshold)";
      ends[1].textContent = panel.vmax.toPrecision(3);
    } else {
      box.querySelector(".bar").style.visibility = "hidden";
      box.querySelector("img.map").remove();
    }
    $("panels").appendChild(box);
    return {base: box.querySelector("img.base"), truth: box.querySelector("img.truth"),
            map: panel ? box.querySelector("img.map") : null, index: i - 1};
  });
  let scan = 0;
  function show() {
    const s = data.scans[scan], k = Number(slider.value);
    panels.forEach((p) => {
      p.base.src = s.images[k];
      if (p.map) {
        p.map.src = s.overlays[p.index][k];
        p.map.style.opacity = showMap.checked ? Number(opacity.value) / 100 : 0;
      }
      const truth = s.truth[k];
      p.truth.hidden = !(truth && showTruth.checked);
      if (truth) { p.truth.src = truth; }
    });
    where.textContent = s.labels[k] + " (" + (k + 1) + " / " + s.images.length + ")";
    document.body.dataset.slice = String(k);
  }
  function setScan(i) {
    scan = (i + data.scans.length) % data.scans.length;
    scanSelect.value = String(scan);
    slider.max = String(data.scans[scan].images.length - 1);
    slider.value = String(data.scans[scan].start);
    show();
  }
  function step(delta) {
    const k = Math.min(Math.max(Number(slider.value) + delta, 0), Number(slider.max));
    slider.value = String(k);
    show();
  }
  scanSelect.addEventListener("change", () => setScan(Number(scanSelect.value)));
  [slider, opacity].forEach((el) => el.addEventListener("input", show));
  [showMap, showTruth].forEach((el) => el.addEventListener("change", show));
  document.addEventListener("keydown", (event) => {
    if (event.target === slider || event.target === opacity || event.target === scanSelect) {
      return;  // these move themselves
    }
    const moves = {ArrowRight: 1, ArrowUp: 1, ArrowLeft: -1, ArrowDown: -1};
    if (event.key in moves) { step(moves[event.key]); event.preventDefault(); }
    else if (event.key === "PageDown") { setScan(scan + 1); event.preventDefault(); }
    else if (event.key === "PageUp") { setScan(scan - 1); event.preventDefault(); }
  });
  setScan(0);
})();
</script>
</body></html>
"""
