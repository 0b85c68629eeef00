"""Real 3D volumes through ``fae predict``: geometry, lesion contrast and speed.

Predicts the BRATS 2013 FLAIR volumes and the MS (Lesjak) FLAIR volume in ``../shared/data``
with a trained run, then checks for every scan that the written anomaly map and mask have the
input's shape and affine, and measures in the scan's own space how the map separates the
ground-truth lesion from the rest of the brain (mean map inside vs outside the lesion, voxel AP,
Dice of the calibrated mask). Times whole volumes (load, prepare, predict, write NIfTI and PNG).
Writes ``OUT/results.json`` and ``OUT/results.md``; exits 1 if a geometry check fails.

    python benchmarks/predict_volumes.py --run RUN
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from fae.data.discover import Scan, discover
from fae.io import atomic_path
from fae.methods.fae import FAE
from fae.metrics import average_precision, dice
from fae.predict import predict_scans

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATASETS = ("brats2013-flair", "ms-lesjak")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data-root", type=Path, default=SHARED)
    parser.add_argument("--out", type=Path, default=Path("benchmark-output/predict-volumes"))
    parser.add_argument("--fpr", type=float, default=0.05)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    estimator = FAE.load(args.run, device=args.device)
    results, failed = {"run": str(args.run), "fpr": args.fpr, "datasets": {}}, False
    for name in DATASETS:
        dataset = discover(args.data_root / name)
        scans = [
            Scan(s.id, s.images["flair"], s.brainmask, "flair")
            for s in dataset.subjects
            if "flair" in s.images
        ]
        out = args.out / name
        started = time.perf_counter()
        rows, failures = predict_scans(estimator, scans, out, args.fpr)
        seconds = time.perf_counter() - started
        subjects, per_scan = {s.id: s for s in dataset.subjects}, []
        for row in rows:
            check = check_scan(subjects[row["name"]], row, out)
            failed |= not check["same_geometry"]
            per_scan.append(check)
        results["datasets"][name] = {
            "scans": per_scan,
            "failures": failures,
            "seconds": seconds,
            "volumes_per_minute": 60 * len(rows) / seconds,
            "slices_per_volume": [row["slices"] for row in rows],
        }
    write(results, args.out)
    print((args.out / "results.md").read_text())
    return 1 if failed else 0


def check_scan(subject, row: dict, out: Path) -> dict:
    """Geometry and lesion contrast of one predicted scan, in the input's own voxel space."""
    source = nib.load(subject.images["flair"].path)
    anomaly = nib.load(out / f"{row['name']}_anomaly.nii.gz")
    mask = nib.load(out / f"{row['name']}_mask.nii.gz")
    same = (
        anomaly.shape == source.shape == mask.shape
        and np.allclose(anomaly.affine, source.affine, atol=1e-5)
        and np.allclose(mask.affine, source.affine, atol=1e-5)
    )
    amap = np.asarray(anomaly.dataobj, np.float32)
    lesion = np.asarray(nib.load(subject.seg.path).dataobj) > 0
    brain = np.asarray(nib.load(out / f"{row['name']}_brainmask.nii.gz").dataobj) > 0
    brain |= lesion  # the brain mask fae used, as written by fae predict
    covered = amap != 0  # voxels of the prepared slices inside the brain
    normal = brain & ~lesion
    return {
        "scan": row["name"],
        "same_geometry": bool(same),
        "shape": list(source.shape),
        "orientation": "".join(nib.aff2axcodes(source.affine)),
        "mean_map_lesion": float(amap[lesion].mean()),
        "mean_map_normal": float(amap[normal].mean()),
        "voxel_ap": average_precision(amap[brain], lesion[brain]),
        "lesion_fraction": float(lesion[brain].mean()),
        "dice_calibrated": dice(np.asarray(mask.dataobj)[brain] > 0, lesion[brain]),
        "brain_covered": float(covered[brain].mean()),
        "warnings": row["warnings"],
    }


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2))
    lines = [
        f"run `{results['run']}`, thresholds at {results['fpr']:g} FPR on healthy data",
        "",
        "| data | scan | shape | orientation | same shape+affine | mean map lesion | "
        "mean map normal | voxel AP (lesion share) | Dice (calibrated mask) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, d in results["datasets"].items():
        for s in d["scans"]:
            lines.append(
                f"| {name} | {s['scan']} | {'x'.join(map(str, s['shape']))} | "
                f"{s['orientation']} | {'yes' if s['same_geometry'] else 'NO'} | "
                f"{s['mean_map_lesion']:.3f} | {s['mean_map_normal']:.3f} | "
                f"{s['voxel_ap']:.3f} ({s['lesion_fraction']:.3f}) | {s['dice_calibrated']:.3f} |"
            )
    lines.append("")
    for name, d in results["datasets"].items():
        lines.append(
            f"- {name}: {len(d['scans'])} volumes ({', '.join(map(str, d['slices_per_volume']))} "
            f"prepared slices) in {d['seconds']:.1f} s = {d['volumes_per_minute']:.1f} "
            "volumes/minute, end to end"
        )
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
