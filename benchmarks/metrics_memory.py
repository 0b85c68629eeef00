"""Memory and speed of streaming pixel metrics on a BraTS-sized test set, and the binning error.

Streams synthetic anomaly maps (default 4e8 pixels, more than BraTS' ~3.2e8 brain-slice pixels)
through :class:`fae.metrics.PixelMetrics`, reporting wall time and peak resident memory, then
compares the binned metrics with the exact ones on the raw scores of a 2e7-pixel subset.
Exits with status 1 when peak RSS exceeds ``--limit-gb``.

    python benchmarks/metrics_memory.py [--pixels 4e8] [--limit-gb 8]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np
from tqdm import tqdm

from fae.metrics import PixelMetrics, average_precision, best_dice, dice_at_fpr, roc_auc

SIDE = 128  # slice side in pixels
COARSE = 8  # lesions and residual structure live on a grid this many pixels coarser
CHUNK_SLICES = 128  # slices per update: 2**21 pixels
MAX_FPR = 0.05


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def synthetic_chunks(n_slices: int, seed: int):
    """Yield ``(scores, labels)`` of shape (slices, 128, 128): blocky lesions in ~1.5 % of pixels,
    float32 scores that are smooth at the coarse scale, higher on lesions, plus pixel noise."""
    rng = np.random.default_rng(seed)
    side = SIDE // COARSE
    for start in range(0, n_slices, CHUNK_SLICES):
        n = min(CHUNK_SLICES, n_slices - start)
        lesion = rng.random((n, side, side), dtype=np.float32) < 0.015
        coarse = rng.random((n, side, side), dtype=np.float32) * np.float32(0.5)
        coarse += np.float32(0.6) * lesion
        labels = lesion.repeat(COARSE, axis=1).repeat(COARSE, axis=2)
        scores = coarse.repeat(COARSE, axis=1).repeat(COARSE, axis=2)
        scores += rng.standard_normal(scores.shape, dtype=np.float32) * np.float32(0.15)
        yield scores, labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixels", type=float, default=4e8, help="pixels to stream (4e8)")
    parser.add_argument("--limit-gb", type=float, default=8.0, help="peak RSS limit, GiB (8)")
    parser.add_argument("--subset", type=float, default=2e7, help="pixels for exact check (2e7)")
    parser.add_argument("--mantissa-bits", type=int, default=12, help="PixelMetrics bins (12)")
    args = parser.parse_args(argv)

    n_slices = max(1, round(args.pixels / SIDE**2))
    acc = PixelMetrics(args.mantissa_bits)
    n_chunks = -(-n_slices // CHUNK_SLICES)
    update_s = 0.0
    start = time.perf_counter()
    for scores, labels in tqdm(synthetic_chunks(n_slices, seed=0), total=n_chunks, unit="chunk"):
        t0 = time.perf_counter()
        acc.update(scores, labels)
        update_s += time.perf_counter() - t0
    got = acc.compute(MAX_FPR)
    stream_s = time.perf_counter() - start
    stream_rss = peak_rss_gib()

    n = got["n_pixels"]
    hist_mib = 2 * 2 ** (9 + args.mantissa_bits) * 8 / 2**20
    print(
        f"streamed {n:,} pixels ({got['n_positive'] / n:.2%} positive) in {n_chunks} chunks "
        f"of <= {CHUNK_SLICES * SIDE**2:,}: {stream_s:.1f} s wall, of which update() "
        f"{update_s:.1f} s ({1e9 * update_s / n:.1f} ns/pixel)"
    )
    print(
        f"peak RSS after streaming: {stream_rss * 1024:.0f} MiB "
        f"(histograms {hist_mib:.0f} MiB, mantissa_bits={args.mantissa_bits})"
    )
    print(
        f"streamed metrics: AP={got['ap']:.6f} AUROC={got['auroc']:.6f} "
        f"dice@{MAX_FPR:.0%}FPR={got['dice_at_fpr']:.6f} (t={got['threshold_at_fpr']:.6g}) "
        f"best dice={got['best_dice']:.6f} (t={got['best_dice_threshold']:.6g})"
    )

    # Binning error: streamed metrics vs exact metrics on the raw scores of a subset.
    sub_slices = max(1, round(args.subset / SIDE**2))
    raw = np.empty((sub_slices, SIDE, SIDE), dtype=np.float32)
    truth = np.empty((sub_slices, SIDE, SIDE), dtype=bool)
    sub = PixelMetrics(args.mantissa_bits)
    for i, (scores, labels) in enumerate(synthetic_chunks(sub_slices, seed=1)):
        raw[i * CHUNK_SLICES : i * CHUNK_SLICES + len(scores)] = scores
        truth[i * CHUNK_SLICES : i * CHUNK_SLICES + len(scores)] = labels
        sub.update(scores, labels)
    t0 = time.perf_counter()
    binned = sub.compute(MAX_FPR)
    exact = {
        "ap": average_precision(raw, truth),
        "auroc": roc_auc(raw, truth),
        "dice_at_fpr": dice_at_fpr(raw, truth, MAX_FPR)[0],
        "best_dice": best_dice(raw, truth)[0],
    }
    exact_s = time.perf_counter() - t0
    errors = "  ".join(f"|d{key}|={abs(binned[key] - exact[key]):.2e}" for key in exact)
    print(f"binning error on {raw.size:,} pixels (exact metrics {exact_s:.1f} s): {errors}")

    peak = peak_rss_gib()
    print(f"peak RSS overall: {peak * 1024:.0f} MiB (limit {args.limit_gb:g} GiB)")
    if peak > args.limit_gb:
        print(
            f"FAIL: peak RSS {peak:.2f} GiB exceeds the limit of {args.limit_gb:g} GiB",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
