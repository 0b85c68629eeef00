"""The paper's protocol on the brain-extracted LGG scans, with its learning curve.

Every (modality, method, seed) run is trained in stages — 1,000, 2,000, 5,000, 10,000 steps by
default — each stage extending the last (bit-identical to one uninterrupted run), and evaluated
after each stage on the selection patients and on the report patients of the three-way split.
The runs (checkpoints, training logs) go to ``--out``; every evaluation's numbers (summary,
per-patient Dice, PR curve, validation loss) also go to ``--results`` (default
``benchmarks/results/<name of --out>``, kept in the repository): that record is what a rerun
skips by, and what the README's tables, bar charts and per-patient Dice are made from
(``--summary`` writes them without training), so finished stages survive the loss of the run
folders (a lost run is retrained, bit-identically, only where a row still needs it). Where the
``best`` preset changes FAE's map (fusion with intensity, each scan centred on its quantile and
the median across slices on FLAIR; on T1 the centred map weighted by darkness and the median),
FAE's runs are also evaluated with those settings (refitted and calibrated on the run's healthy
validation scans), as method ``fae+fusion+center25+median3`` / ``fae+dark+center25+median3``
(a changed preset gets rows of its own, and a lost run is retrained for them): the learning
curve of the ``best`` preset, whose training is FAE's own here (Lite0 with the lgg-cpu.toml
settings, on both modalities). ``--only-seeds 3,4`` runs only those seeds; ``--no-comparison``
leaves the comparison tables alone (a method run for fewer seeds than the others would
otherwise shrink them to its own). Stage by stage: every run reaches 1,000 steps before any
goes on to 2,000, so that an early stop leaves comparable runs. The curve lands in
``RESULTS/lgg-<modality>/curve.csv``, the comparison at the last stage in
``RESULTS/lgg-<modality>/{test,select}-<steps>/``
(``results.md`` with Welch p against FAE, ``bars.png``, ``pr_curves.png``, ``per_patient.csv``;
in ``fae+<settings>/`` the same table with Welch p of FAE's ``best`` map settings against every
other row), over the seeds that every method of ``--methods`` has at that stage; where every
final run is at hand, ``fae benchmark``'s report (``report.html`` with the slice browser) is
written in ``OUT/lgg-<modality>`` (``--no-report`` skips it: a lever's runs need only their
recorded numbers). Everything resumes: rerun the same command after an
interruption. ``--brain-mask otsu`` runs the same protocol on the skull-on scans (the whole head
as the "brain"), for contrast; its numbers must go to their own ``--out``/``--results``.

    .venv/bin/python benchmarks/protocol.py --modality t1,flair --methods fae --seeds 5 \
        --out benchmark-output/protocol
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from fae.benchmark import (
    METRICS,
    method_params,
    run_benchmark,
    summarize,
    write_per_patient,
    write_summary,
    write_tables,
)
from fae.config import read_config_file
from fae.data.cache import default_cache_dir
from fae.data.discover import discover
from fae.data.preprocess import PrepConfig
from fae.data.slices import prepare_dataset
from fae.io import atomic_path
from fae.methods.base import load_method
from fae.methods.registry import PROPOSED, method_class
from fae.report import benchmark_report
from fae.workflow import RunSpec, train_or_resume

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# The three-way split of issue 13, fixed by seed: report (test), healthy-slice training and
# validation, and selection patients.
SPLIT = {"test_fraction": 0.35, "val_fraction": 0.1, "select_fraction": 0.15, "split_seed": 0}
CONFIG = Path(__file__).parent / "configs" / "lgg-cpu.toml"
RESULTS = Path(__file__).parent / "results"
STAGES = (1000, 2000, 5000, 10_000)
COLUMNS = ("method", "seed", "steps", "subjects", "val_loss", *METRICS, "precision")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modality", default="t1,flair", help="t1, flair or both")
    parser.add_argument("--methods", default="fae")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--only-seeds",
        type=_seed_list,
        help="train and evaluate only these of the seeds (e.g. 3,4); the comparison still "
        "covers every recorded seed below --seeds",
    )
    parser.add_argument("--stages", default=",".join(map(str, STAGES)))
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--out", type=Path, required=True, help="the run folders")
    parser.add_argument(
        "--results", type=Path, help="the numbers, kept (default: benchmarks/results/<out's name>)"
    )
    parser.add_argument(
        "--brain-mask",
        default="auto",
        choices=("auto", "otsu"),
        help="where brain masks come from (auto: HD-BET on these skull-on scans; otsu: the head "
        "mask, the skull left on, for contrast)",
    )
    parser.add_argument("--summary", action="store_true", help="only write the comparison")
    parser.add_argument(
        "--no-comparison",
        action="store_true",
        help="train and record only, leaving the comparison tables as they are (for a method's "
        "missing seeds, whose partial table would replace the comparison of more methods)",
    )
    parser.add_argument(
        "--no-report", action="store_true", help="skip fae benchmark's report.html at the end"
    )
    args = parser.parse_args()
    seeds = args.only_seeds or range(args.seeds)
    if args.summary and args.no_comparison:
        parser.error("--summary and --no-comparison exclude each other")
    if not all(s < args.seeds for s in seeds):
        given = ",".join(map(str, seeds))
        parser.error(f"--only-seeds {given}: each must be below --seeds {args.seeds}")
    args.results = args.results or RESULTS / args.out.name
    _check_brain_mask(parser, args.results, args.brain_mask)
    modalities = args.modality.split(",")
    methods = args.methods.split(",")
    stages = [int(s) for s in args.stages.split(",")]
    overrides = read_config_file(args.config)
    cache = default_cache_dir()
    prep = PrepConfig(brain_mask=args.brain_mask)
    for steps in [] if args.summary else stages:
        for seed in seeds:
            for modality in modalities:
                for method in methods:
                    _stage(args.out / f"lgg-{modality}", args.results / f"lgg-{modality}",
                           modality, method, seed, steps, overrides, prep, cache)  # fmt: skip
    for modality in [] if args.no_comparison else modalities:
        results, out = args.results / f"lgg-{modality}", args.out / f"lgg-{modality}"
        extra = _extra_labels(results, methods)
        for subjects in ("select", "test"):
            summary = write_comparison(results, methods, extra, args.seeds, stages[-1], subjects)
            print(modality, subjects, json.dumps({m: {k: round(summary[m][k]["mean"], 4)
                                                  for k in METRICS} for m in summary}))  # fmt: skip
            if not (args.summary or args.no_report) and _all_runs_at(out, methods, args.seeds):
                data = SHARED / f"lgg-{modality}"
                run_benchmark(data, out, methods, args.seeds, modality, stages[-1], overrides,
                              prep, SPLIT, cache, subjects=subjects)  # fmt: skip
                where = out if subjects == "test" else out / subjects
                benchmark_report(out, where / "report.html", subjects)


def _seed_list(text: str) -> list[int]:
    """``--only-seeds``: comma-separated seeds, each a number from 0, in the order given."""
    parts = text.split(",")
    if not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of seeds (0, 1...)"
        )
    return list(dict.fromkeys(int(p) for p in parts))


def _check_brain_mask(parser: argparse.ArgumentParser, results: Path, brain_mask: str) -> None:
    """Keep brain-extracted and skull-on numbers apart: a results folder records the brain
    mask its evaluations used (``brain_mask.txt``) and refuses the other."""
    path = results / "brain_mask.txt"
    if path.exists() and path.read_text().strip() != brain_mask:
        parser.error(f"{results} holds results with --brain-mask {path.read_text().strip()}: "
                     "use another --out or --results")  # fmt: skip
    if not path.exists():
        results.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(brain_mask + "\n")


def _stage(
    out: Path,
    results: Path,
    modality: str,
    method: str,
    seed: int,
    steps: int,
    overrides: dict,
    prep: PrepConfig,
    cache: Path,
) -> None:
    """One run trained (or extended) to ``steps`` and evaluated on both patient sets."""
    run = out / "runs" / method / f"seed{seed}"
    changes = _best_changes(modality) if method == PROPOSED else {}
    best_missing = bool(changes) and not _done(results, best_label(changes), seed, steps)
    if not _done(results, method, seed, steps) or best_missing:
        # Training is deterministic: a run folder lost since its numbers were recorded is
        # retrained to the same weights when the best preset's rows still need it.
        train_run(run, modality, method, seed, steps, overrides, prep, cache)
    if not _done(results, method, seed, steps):
        est = load_method(run, progress=False)
        for subjects in ("select", "test"):
            summary, per_subject = est.evaluate(_patients(est, subjects, cache))
            precision = est.meta["precision"]
            _record(results, method, seed, steps, subjects, summary, per_subject, run, precision)
    if best_missing:
        _record_best(results, seed, steps, run, changes, cache)


def train_run(
    run: Path,
    modality: str,
    method: str,
    seed: int,
    steps: int,
    overrides: dict,
    prep: PrepConfig,
    cache: Path,
) -> None:
    """The protocol's run of ``method`` at ``seed`` in ``run``: trained to ``steps``, extended
    to them, or left as it is when it has them (deterministic: a lost run comes back the
    same)."""
    params = method_params(method, seed, steps, overrides.get(method, {}))
    spec = RunSpec(SHARED / f"lgg-{modality}", modality, method, params, prep, **SPLIT)
    train_or_resume(spec, run, cache, announce=print)


def _best_changes(modality: str) -> dict:
    """The map settings where FAE's ``best`` preset for ``modality`` differs from the default."""
    cls = method_class(PROPOSED)
    default = cls.config_class()
    return {k: v for k, v in cls.map_settings("best", modality).items() if v != getattr(default, k)}


def best_label(changes: dict) -> str:
    """The curve's name for FAE's runs with the ``best`` preset's map settings:
    ``fae+fusion``, ``fae+median3``, ``fae+top25``..."""
    names = {
        "fusion": lambda v: "fusion",
        "dark_weight": lambda v: "dark",
        "dark_smooth": lambda v: f"smooth{v:g}",
        "volume_center": lambda v: f"center{round(100 * v)}",
        "slice_median": lambda v: f"median{v}",
        "slice_score": str,
    }
    return "+".join([PROPOSED, *(names[k](v) for k, v in changes.items())])


def _extra_labels(results: Path, methods: list[str]) -> list[str]:
    """The rows compared beside FAE: its runs with each ``best`` map settings the curve has."""
    recorded = {r["method"] for r in _rows(results)}
    return sorted(m for m in recorded if m.startswith(PROPOSED + "+") and PROPOSED in methods)


def _patients(est, subjects: str, cache: Path):
    """The prepared slices of a run's ``subjects`` (``select``, ``test`` or ``val``)."""
    dataset = discover(est.meta["data"])
    ids = est.meta["splits"][subjects]
    return prepare_dataset(dataset, est.meta["modality"], est.prep, cache, ids, False)


def _record_best(
    results: Path, seed: int, steps: int, run: Path, changes: dict, cache: Path
) -> None:
    """FAE's run at ``steps`` with the map ``changes`` of the ``best`` preset (refitted and
    calibrated on the run's healthy validation slices) on both patient sets."""
    est = load_method(run, progress=False)
    if est.step_ != steps:  # a run already extended past this stage
        return
    best = est.with_maps(_patients(est, "val", cache), **changes)
    for subjects in ("select", "test"):
        summary, per_subject = best.evaluate(_patients(est, subjects, cache))
        label, precision = best_label(changes), best.meta["precision"]
        _record(results, label, seed, steps, subjects, summary, per_subject, run, precision)


def _rows(results: Path) -> list[dict]:
    path = results / "curve.csv"
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _done(results: Path, method: str, seed: int, steps: int) -> bool:
    key = (method, str(seed), str(steps))
    found = {r["subjects"] for r in _rows(results) if (r["method"], r["seed"], r["steps"]) == key}
    return found == {"select", "test"} and all(
        _evaluation(results, method, seed, steps, s).exists() for s in found
    )


def _evaluation(results: Path, method: str, seed: int, steps: int, subjects: str) -> Path:
    return results / method / f"seed{seed}" / f"{subjects}-{steps}.json"


def _record(
    results: Path,
    method: str,
    seed: int,
    steps: int,
    subjects: str,
    summary: dict,
    per_subject: list[dict],
    run: Path,
    precision: str,
) -> None:
    """Keep one evaluation: its JSON (summary with PR curve, per-patient Dice, the precision the
    run trained and mapped in: ``auto`` is bf16 or fp32 by CPU) and its row of ``curve.csv``
    (both rewritten atomically)."""
    val_loss = _val_loss(run, steps)
    path = _evaluation(results, method, seed, steps, subjects)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "summary": summary,
        "per_subject": per_subject,
        "val_loss": val_loss,
        "precision": precision,
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1, default=float))
    row = {"method": method, "seed": seed, "steps": steps, "subjects": subjects}
    key = tuple(str(row[k]) for k in ("method", "seed", "steps", "subjects"))
    rows = [r for r in _rows(results) if tuple(r[k] for k in row) != key]
    row["val_loss"] = val_loss
    row.update({k: f"{summary[k]:.6f}" for k in METRICS})
    row["precision"] = precision
    rows.append(row)
    with atomic_path(results / "curve.csv") as tmp, tmp.open("w", newline="") as fh:
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


def write_comparison(
    results: Path, labels: list[str], extra: list[str], seeds: int, steps: int, subjects: str
) -> dict:
    """The comparison at ``steps`` from the kept evaluations, over the seeds every method of
    ``labels`` has (so that Welch's tests compare like with like), with the rows of FAE's
    ``best`` map settings in ``extra`` that have those seeds too (a former preset's rows may
    lack the seeds recorded since it changed): ``results.md``/``.csv``/``.json``,
    ``bars.png``, ``pr_curves.png`` and ``per_patient.csv``/``.png`` (each method's Dice@5%FPR
    per patient, mean over those seeds) in ``RESULTS/<subjects>-<steps>``; returns the
    summary."""

    def found(method: str) -> set[int]:
        return {
            s for s in range(seeds) if _evaluation(results, method, s, steps, subjects).exists()
        }

    common = sorted(set.intersection(*map(found, labels)) if labels else set())
    if not common:
        return {}
    kept = [m for m in extra if found(m).issuperset(common)]
    if left_out := [m for m in extra if m not in kept]:
        print(f"at {steps} steps, {', '.join(left_out)} lack one of seeds {common}: left out")
    labels = [*labels, *kept]
    records = {
        m: [json.loads(_evaluation(results, m, s, steps, subjects).read_text()) for s in common]
        for m in labels
    }
    runs = {m: [r["summary"] for r in rs] for m, rs in records.items()}
    summary = summarize(runs)
    where = results / f"{subjects}-{steps}"
    write_summary(summary, runs, where)
    write_per_patient({m: [r["per_subject"] for r in rs] for m, rs in records.items()}, where)
    for best in kept:
        # the best map settings tested against every other row, in a table of its own
        order = {best: runs[best], **{m: v for m, v in runs.items() if m != best}}
        write_tables(summarize(order, reference=best), where / best, reference=best)
    return summary


def _all_runs_at(out: Path, methods: list[str], seeds: int) -> bool:
    """Whether every final run is still in ``out`` (run folders are not kept: a run whose
    numbers a past session recorded may be gone, and the report would have to retrain it)."""
    return all(
        (out / "runs" / m / f"seed{s}" / "checkpoint.pt").exists()
        for m in methods
        for s in range(seeds)
    )


if __name__ == "__main__":
    main()
