"""Other sites: FLAIR models trained on brain-extracted LGG, tried on other sites' FLAIR volumes.

For the FAE runs of ``benchmarks/protocol.py`` (``OUT/lgg-flair/runs/fae/seed*``, at whatever
step they hold) and each site (default: the BRATS 2013 and MS volumes of ``../shared/data``,
skull-stripped already, so their own brain masks are used), the maps of every scan are scored
(pixel AP, Dice at the 5 %-FPR threshold, best Dice, slice AUROC) together with the share of
brain pixels at or above the run's calibrated 5 %-FPR pixel threshold ("flagged": on healthy
tissue it should be about 0.05 plus the lesion), for:

- ``fae``: the structural map, calibrated on LGG (what a new user gets from a plain run);
- ``best``: the ``best`` preset's FLAIR map (fusion with intensity, each scan centred on its
  own quantile, median over 3 slices: whatever the preset holds now), fitted on LGG's healthy
  slices;
- ``best, site-calibrated``: the same after ``fae calibrate`` on the site's healthy slices,
  which refits the fusion's healthy distributions and the thresholds. No site here has healthy
  scans, so its patients' lesion-free slices stand in for them: for each scan, those of the
  site's *other* scans (leave one scan out), or, for a one-scan site, its own;
- with ``--fine-tune N``, ``best, site-fine-tuned``: the run first fine-tuned N steps on those
  same slices (``fae train --init RUN``: the run's weights and feature statistics, fresh
  optimisers), then fitted and calibrated on them;
- ``threshold``: the image intensity; ``threshold + median``: the same with the median over 3
  slices that ``best`` has.

    .venv/bin/python benchmarks/sites.py --out benchmark-output/protocol [--fine-tune 300]

Each run's scores are kept in ``RESULTS/lgg-flair/sites[-fine-tune-N]/seedK-STEP.json``
(``--results``, default ``benchmarks/results/<out's name>``) with the ``best`` settings they
had, and a run already scored at its step with today's ``best`` is not scored again, so an
interrupted run goes on where it stopped; the table over the
seeds lands beside them in ``sites[-fine-tune-N].md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fae.benchmark import mean_std
from fae.data.cache import default_cache_dir
from fae.data.discover import discover
from fae.data.slices import SliceSet, prepare_dataset
from fae.evaluation import evaluate_maps, slice_scores
from fae.io import atomic_path
from fae.methods.base import load_method
from fae.methods.registry import PROPOSED, method_class
from fae.postprocess import median_across_slices

KEYS = ("pixel_ap", "dice_at_fpr", "best_dice", "slice_auroc", "flagged")
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RESULTS = Path(__file__).parent / "results"
SITES = {"brats2013": SHARED / "brats2013-flair", "ms": SHARED / "ms-lesjak"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="protocol.py's --out")
    parser.add_argument("--seeds", type=int, help="only seeds 0..N-1 (default: every run)")
    parser.add_argument("--fine-tune", type=int, default=0, metavar="N", help="steps (0: none)")
    parser.add_argument("--results", type=Path, help="default: benchmarks/results/<out's name>")
    args = parser.parse_args()
    folder = args.out / "lgg-flair"
    results = (args.results or RESULTS / args.out.name) / "lgg-flair"
    name = f"sites-fine-tune-{args.fine_tune}" if args.fine_tune else "sites"
    runs = sorted((folder / "runs" / "fae").glob("seed*"), key=lambda p: int(p.name[4:]))
    runs = runs[: args.seeds] if args.seeds else runs
    changes = method_class(PROPOSED).map_settings("best", "flair")
    records = []
    for run in tqdm(runs, desc="seeds", unit="run"):
        est = load_method(run, progress=False)
        path = results / name / f"{run.name}-{est.step_}.json"
        record = json.loads(path.read_text()) if path.exists() else {}
        if record.get("best") != changes:  # not scored at this step with today's preset
            sites = _score_run(est, changes, args.fine_tune)
            record = {"steps": est.step_, "best": changes, "sites": sites}
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(record, indent=1, default=float))
        records.append(record)
    result = {"seeds": len(records), "steps": [r["steps"] for r in records], "sites": {}}
    for site in SITES:
        variants = records[0]["sites"][site] if records else {}
        result["sites"][site] = {
            variant: _summary([r["sites"][site][variant] for r in records]) for variant in variants
        }
    with atomic_path(results / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    text = _markdown(result)
    with atomic_path(results / f"{name}.md") as tmp:
        tmp.write_text(text)
    print(text)


def _score_run(est, changes: dict, fine_tune: int) -> dict[str, dict[str, dict]]:
    """Every map of one run on every site → its scores (site → map → metric → value); ``best``
    is the run with the map settings ``changes``."""
    cache = default_cache_dir()
    lgg = discover(est.meta["data"])
    val = prepare_dataset(lgg, "flair", est.prep, cache, est.meta["splits"]["val"], False)
    best = est.with_maps(val, **changes)
    scored: dict[str, dict[str, dict]] = {}
    for site, path in SITES.items():
        scans = prepare_dataset(discover(path), "flair", est.prep, cache, progress=False)
        maps = {
            "fae": (est.predict(scans), est.thresholds(0.05)[0]),
            "best": (best.predict(scans), best.thresholds(0.05)[0]),
            "best, site-calibrated": _at_site(best, scans, _calibrated),
        }
        if fine_tune:
            tune = partial(_fine_tuned, steps=fine_tune, changes=changes)
            maps["best, site-fine-tuned"] = _at_site(est, scans, tune)
        intensity = np.where(scans.masks, scans.images, 0)
        maps["threshold"] = (intensity, None)
        maps["threshold + median"] = (
            median_across_slices(intensity, scans.masks, 3, scans.subject, scans.slice_index),
            None,
        )
        scored[site] = {
            variant: _score(scans, m, est.config.slice_score, threshold)
            for variant, (m, threshold) in maps.items()
        }
    return scored


def _at_site(est, scans: SliceSet, adapt) -> tuple[np.ndarray, np.ndarray]:
    """Maps of each scan by ``adapt(est, healthy)``, an estimator calibrated on the site's
    healthy slices (the other scans' lesion-free slices, or its own for a one-scan site), and
    each pixel's calibrated threshold."""
    maps = np.zeros(scans.images.shape, np.float32)
    thresholds = np.zeros(len(scans), np.float32)
    n = len(scans.subject_ids)
    for i in range(n):
        own = scans.subject == i
        local = adapt(est, scans.take(~own if n > 1 else own))
        maps[own] = local.predict(scans.take(own))
        thresholds[own] = local.thresholds(0.05)[0]
    return maps, thresholds[:, None, None]


def _calibrated(est, healthy: SliceSet):
    """``est`` refitted and calibrated on ``healthy`` (``fae calibrate``)."""
    return est.with_maps(healthy)


def _fine_tuned(est, healthy: SliceSet, steps: int, changes: dict):
    """``est`` fine-tuned ``steps`` steps on the lesion-free slices of the ``healthy`` scans
    with the ``best`` map settings, which also fits and calibrates them there (``fae train
    --init``)."""
    params = {**est.config.to_dict(), **changes, "steps": steps, "checkpoint_every": steps}
    tuned = type(est)(prep=est.prep, device=est.device, progress=True, **params)  # a bar each
    return tuned.fit(healthy.lesion_free(), healthy, init=est)


def _score(slices: SliceSet, maps: np.ndarray, kind: str, threshold) -> dict:
    maps = np.asarray(maps, np.float32)
    summary, _ = evaluate_maps(slices, maps, slice_scores(maps, slices.masks, kind))
    row = {k: summary[k] for k in KEYS if k in summary}
    if threshold is not None:
        flagged = (maps >= threshold) & slices.masks
        row["flagged"] = float(flagged.sum() / slices.masks.sum())
    return row


def _summary(rows: list[dict]) -> dict:
    return {k: mean_std([r[k] for r in rows]) for k in (rows[0] if rows else ())}


def _markdown(result: dict) -> str:
    lines = [
        f"LGG FLAIR models on other sites, {result['seeds']} seeds at steps {result['steps']}:",
        "",
        "| site | map | pixel AP | Dice@5%FPR | best Dice | slice AUROC | flagged |",
        "|---|---|---|---|---|---|---|",
    ]
    for site, variants in result["sites"].items():
        for name, row in variants.items():
            cells = [
                f"{row[k]['mean']:.3f} ± {row[k]['std']:.3f}" if k in row else "–" for k in KEYS
            ]
            lines.append(f"| {site} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
