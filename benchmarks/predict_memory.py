"""Peak memory of one ``fae predict`` call over 20 and over 200 scans: it should not grow.

Makes 10 synthetic T1 scans (about 1 mm, 140 axial slices of 160×192), copies them to 200
input files, trains a 1-step FAE run (the paper's autoencoder on EfficientNet-Lite0: the
model's size, not its quality, matters here) and runs ``fae predict`` on the first 20 and on
all 200 inputs, each in a fresh process; prints the peak resident memory (``ru_maxrss`` of the
child).

    .venv/bin/python benchmarks/predict_memory.py --out benchmark-output/predict-memory
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
from pathlib import Path

from fae.data.synthetic import make_synthetic

PEAK = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
    "stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--counts", default="20,200")
    args = parser.parse_args()
    out = args.out
    data, inputs = out / "data", out / "inputs"
    if not (data / "datalist.csv").exists():
        make_synthetic(data, 10, seed=0, modalities=("t1",), resolution_mm=1, progress=False)
    sources = sorted(data.glob("*_t1.nii.gz"))
    counts = [int(c) for c in args.counts.split(",")]
    inputs.mkdir(parents=True, exist_ok=True)
    for i in range(max(counts)):
        target = inputs / f"scan{i:03d}_t1.nii.gz"
        if not target.exists():
            shutil.copyfile(sources[i % len(sources)], target)
    fae = [sys.executable, "-m", "fae"]
    run = out / "run"
    if not (run / "checkpoint.pt").exists():
        subprocess.run([*fae, "train", "--data", str(data), "--out", str(run), "--steps", "1",
                        "--backbone", "efficientnet-lite0", "--batchnorm", "frozen",
                        "--brain-mask", "nonzero", "--batch-size", "8"],
                       check=True, capture_output=True)  # fmt: skip
    print("| scans in one call | slices | peak memory (MiB) |")
    print("|---|---|---|")
    for n in counts:
        files = sorted(inputs.glob("*.nii.gz"))[:n]
        call = [*fae, "predict", *map(str, files), "--run", str(run), "--out",
                str(out / f"p{n}"), "--brain-mask", "nonzero"]  # fmt: skip
        result = subprocess.run(  # a fresh parent per call, so its children's peak is this one's
            [sys.executable, "-c", PEAK, *call], check=True, capture_output=True, text=True
        )
        peak_kib = int(result.stdout.split()[-1])
        slices = _slices(out / f"p{n}" / "scores.csv")
        print(f"| {n} | {slices} | {peak_kib / 1024:.0f} |", flush=True)


def _slices(scores: Path) -> int:
    with scores.open(newline="") as fh:
        return sum(int(row["slices"]) for row in csv.DictReader(fh))


if __name__ == "__main__":
    main()
