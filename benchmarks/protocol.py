"""The paper's protocol on the brain-extracted LGG scans, with its learning curve.

Every (modality, method, seed) run is trained in stages — 1,000, 2,000, 5,000, 10,000 steps
by default — each stage extending the last (bit-identical to one uninterrupted run), and
evaluated after each stage on the selection patients and on the report patients of the
three-way split. Where the ``best`` preset changes FAE's map (fusion with intensity on FLAIR,
the median across slices on T1), FAE's runs are also evaluated with those settings (refitted
and calibrated on the run's healthy validation slices), as method ``fae+fusion`` /
``fae+median3``: on FLAIR the learning curve of the ``best`` preset, whose training is FAE's
own here (on T1 ``best`` trains with EfficientNet-Lite1: ``--config
benchmarks/configs/levers/lite1.toml`` gives its curve). Stage
by stage: every run reaches 1,000 steps before any goes on to 2,000, so that an early stop
leaves comparable runs. The curve lands in ``OUT/lgg-<modality>/curve.csv``; at the end ``fae
benchmark``'s own summary of the final runs (``results.md``, ``bars.png``, ``report.html``...,
and ``select/``) is written there. Everything resumes: rerun the same command after an interruption.

    .venv/bin/python benchmarks/protocol.py --modality t1,flair --methods fae --seeds 5 \
        --out benchmark-output/protocol
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from fae.benchmark import METRICS, method_params, run_benchmark
from fae.config import read_config_file
from fae.data.cache import default_cache_dir
from fae.data.discover import discover
from fae.data.preprocess import PrepConfig
from fae.data.slices import prepare_dataset
from fae.io import atomic_path
from fae.methods.base import load_method
from fae.methods.registry import PROPOSED, method_class
from fae.report import benchmark_report
from fae.workflow import RunSpec, evaluate_run, train_or_resume

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# The three-way split of issue 13, fixed by seed: report (test), healthy-slice training and
# validation, and selection patients.
SPLIT = {"test_fraction": 0.35, "val_fraction": 0.1, "select_fraction": 0.15, "split_seed": 0}
CONFIG = Path(__file__).parent / "configs" / "lgg-cpu.toml"
STAGES = (1000, 2000, 5000, 10_000)
COLUMNS = ("method", "seed", "steps", "subjects", "val_loss", *METRICS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modality", default="t1,flair", help="t1, flair or both")
    parser.add_argument("--methods", default="fae")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--stages", default=",".join(map(str, STAGES)))
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    modalities = args.modality.split(",")
    methods = args.methods.split(",")
    stages = [int(s) for s in args.stages.split(",")]
    overrides = read_config_file(args.config)
    cache = default_cache_dir()
    prep = PrepConfig()
    for steps in stages:
        for seed in range(args.seeds):
            for modality in modalities:
                for method in methods:
                    _stage(args.out / f"lgg-{modality}", modality, method, seed, steps,
                           overrides, prep, cache)  # fmt: skip
    for modality in modalities:
        data, out = SHARED / f"lgg-{modality}", args.out / f"lgg-{modality}"
        for subjects in ("select", "test"):
            summary = run_benchmark(data, out, methods, args.seeds, modality, stages[-1],
                                    overrides, prep, SPLIT, cache, subjects=subjects)  # fmt: skip
            where = out if subjects == "test" else out / subjects
            benchmark_report(out, where / "report.html", subjects)
        print(modality, json.dumps({m: {k: summary[m][k]["mean"] for k in METRICS}
                                    for m in summary}))  # fmt: skip


def _stage(
    out: Path,
    modality: str,
    method: str,
    seed: int,
    steps: int,
    overrides: dict,
    prep: PrepConfig,
    cache: Path,
) -> None:
    """One run trained (or extended) to ``steps`` and evaluated on both patient sets."""
    data = SHARED / f"lgg-{modality}"
    run = out / "runs" / method / f"seed{seed}"
    if not _done(out, method, seed, steps):
        params = method_params(method, seed, steps, overrides.get(method, {}))
        spec = RunSpec(data, modality, method, params, prep, **SPLIT)
        train_or_resume(spec, run, cache, announce=print)
        for subjects in ("select", "test"):
            summary = evaluate_run(run, data, run / f"eval-{subjects}-{steps}", subjects, cache)
            _record(out, method, seed, steps, subjects, summary, run)
    if method == PROPOSED:
        cls = method_class(method)
        best, default = cls.preset("best", modality), cls.config_class()
        changes = {k: best[k] for k in cls.MAP_SETTINGS if best[k] != getattr(default, k)}
        if changes and not _done(out, best_label(changes), seed, steps):
            _record_best(out, modality, seed, steps, run, changes, cache)


def best_label(changes: dict) -> str:
    """The curve's name for FAE's runs with the ``best`` preset's map settings:
    ``fae+fusion``, ``fae+median3``..."""
    names = {"fusion": lambda v: "fusion", "slice_median": lambda v: f"median{v}"}
    return "+".join([PROPOSED, *(names[k](v) for k, v in changes.items())])


def _record_best(
    out: Path, modality: str, seed: int, steps: int, run: Path, changes: dict, cache: Path
) -> None:
    """FAE's run at ``steps`` with the map ``changes`` of the ``best`` preset (refitted and
    calibrated on the run's healthy validation slices) on both patient sets."""
    est = load_method(run, progress=False)
    if est.step_ != steps:  # a run already extended past this stage
        return
    dataset = discover(est.meta["data"])
    splits = est.meta["splits"]
    val = prepare_dataset(dataset, modality, est.prep, cache, splits["val"], False)
    best = est.with_maps(val.lesion_free(), **changes)
    for subjects in ("select", "test"):
        patients = prepare_dataset(dataset, modality, est.prep, cache, splits[subjects], False)
        summary, _ = best.evaluate(patients)
        _record(out, best_label(changes), seed, steps, subjects, summary, run)


def _done(out: Path, method: str, seed: int, steps: int) -> bool:
    path = out / "curve.csv"
    if not path.exists():
        return False
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    key = (method, str(seed), str(steps))
    return {r["subjects"] for r in rows if (r["method"], r["seed"], r["steps"]) == key} == {
        "select",
        "test",
    }


def _record(
    out: Path, method: str, seed: int, steps: int, subjects: str, summary: dict, run: Path
) -> None:
    """Append one row to ``curve.csv`` (rewritten atomically)."""
    path = out / "curve.csv"
    rows = []
    if path.exists():
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    row = {"method": method, "seed": seed, "steps": steps, "subjects": subjects}
    key = tuple(str(row[k]) for k in ("method", "seed", "steps", "subjects"))
    rows = [r for r in rows if tuple(r[k] for k in ("method", "seed", "steps", "subjects")) != key]
    row["val_loss"] = _val_loss(run, steps)
    row.update({k: f"{summary[k]:.6f}" for k in METRICS})
    rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _val_loss(run: Path, steps: int) -> str:
    path = run / "train_log.csv"
    if not path.exists():  # a method without training
        return ""
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if int(row["step"]) == steps and row["val_loss"]:
                return row["val_loss"]
    return ""


if __name__ == "__main__":
    main()
