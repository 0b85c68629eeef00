"""Training speed with 1 and with N processes (``torchrun``, data-parallel), same global batch.

Trains FAE (EfficientNet-Lite0, frozen BatchNorm, standardised features: the CPU benchmark's
setting) on synthetic 128×128 scans, once with ``fae train`` in one process and once under
``torchrun --nproc-per-node N``; the CPU's threads are split between the processes. Prints
steps/s (from the run's ``train_log.csv``: the time between the first logged step and the
last, so feature extraction and start-up are not counted) and the largest loss difference.

    .venv/bin/python benchmarks/ddp_scaling.py --processes 2 --steps 60
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from fae.data.synthetic import make_synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_synthetic(root / "data", 8, seed=0, modalities=("t1",), progress=False)
        config = root / "log.toml"
        config.write_text(f"log_every = 10\ncheckpoint_every = {args.steps}\n")
        rows = []
        for n in (1, args.processes):
            run = root / f"run{n}"
            train = [
                "train", "--data", str(root / "data"), "--out", str(run), "--steps",
                str(args.steps), "--batch-size", str(args.batch_size), "--backbone",
                "efficientnet-lite0", "--batchnorm", "frozen", "--standardize-features",
                "--brain-mask", "given", "--cache-dir", str(root / "cache"), "--device",
                args.device, "--config", str(config),
            ]  # fmt: skip
            head = [sys.executable, "-m", "fae"]
            if n > 1:
                head = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                        str(n), "-m", "fae"]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // n))}
            subprocess.run([*head, *train], check=True, env=env, capture_output=True)
            with (run / "train_log.csv").open(newline="") as fh:
                log = list(csv.DictReader(fh))
            first, last = log[0], log[-1]
            seconds = float(last["seconds"]) - float(first["seconds"])
            speed = (int(last["step"]) - int(first["step"])) / seconds
            rows.append((n, speed, [float(r["loss"]) for r in log]))
    base = rows[0][2]
    print(f"| processes | threads each | steps/s (global batch {args.batch_size}) | max |Δloss| |")
    print("|---|---|---|---|")
    for n, speed, losses in rows:
        delta = max(abs(a - b) for a, b in zip(base, losses, strict=True))
        print(f"| {n} | {max(1, threads // n)} | {speed:.2f} | {delta:.1e} |")


if __name__ == "__main__":
    main()
