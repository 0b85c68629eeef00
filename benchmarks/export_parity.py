"""Parity of ``fae export``'s ONNX model with PyTorch on real slices: a run (optionally with the
``best`` preset's map settings, refitted on its healthy validation slices) exported, then both
make maps of the prepared slices of its report (or selection) patients; prints the largest
absolute difference, the file's size and both speeds as one Markdown row.

    .venv/bin/python benchmarks/export_parity.py \
        --run benchmark-output/protocol/lgg-t1/runs/fae/seed0
    .venv/bin/python benchmarks/export_parity.py --best \\
        --run benchmark-output/protocol/lgg-flair/runs/fae/seed0
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from fae.data.cache import default_cache_dir
from fae.data.discover import discover
from fae.data.slices import prepare_dataset
from fae.exported import ExportedModel, export_onnx
from fae.methods.base import load_method
from fae.methods.registry import method_class


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--subjects", choices=["test", "select"], default="test")
    parser.add_argument("--best", action="store_true", help="with the best preset's map settings")
    args = parser.parse_args()
    cache = default_cache_dir()
    est = load_method(args.run, device="cpu", progress=False, precision="fp32")
    dataset, splits = discover(est.meta["data"]), est.meta["splits"]
    modality = est.meta["modality"]
    slices = prepare_dataset(dataset, modality, est.prep, cache, splits[args.subjects], False)
    with tempfile.TemporaryDirectory() as tmp:
        run, label = args.run, est.name
        if args.best:
            changes = method_class(est.name).map_settings("best", modality)
            val = prepare_dataset(dataset, modality, est.prep, cache, splits["val"], False)
            est = est.with_maps(val, **changes)
            run = Path(tmp) / "best"
            est.save_run(run)
            shutil.copy(args.run / "train_log.csv", run / "train_log.csv")
            label += " " + ", ".join(f"{k}={v}" for k, v in changes.items())
        path = Path(tmp) / "model.onnx"
        started = time.perf_counter()
        check = export_onnx(run, path)
        export_seconds = time.perf_counter() - started
        exported = ExportedModel(path)
        volume, index = slices.subject, slices.slice_index
        started = time.perf_counter()
        expected = est.predict(slices.images, slices.masks, 64, volume, index)
        torch_seconds = time.perf_counter() - started
        started = time.perf_counter()
        got = exported.predict(slices.images, slices.masks, 64, volume, index)
        onnx_seconds = time.perf_counter() - started
        difference = float(np.abs(got - expected).max())
        size = path.stat().st_size / 1e6
    n = len(slices)
    print(
        "| run | maps | slices | max abs difference | map range | export (s) | MB | "
        "PyTorch fp32 slices/s | onnxruntime slices/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.run} | {label} | {n} | {difference:.2g} (export check {check:.2g}) | "
        f"{expected.min():.3g}–{expected.max():.3g} | {export_seconds:.0f} | {size:.1f} | "
        f"{n / torch_seconds:.1f} | {n / onnx_seconds:.1f} |"
    )


if __name__ == "__main__":
    main()
