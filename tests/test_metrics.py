"""Metrics against independent oracles: sklearn, brute-force threshold sweeps, frexp arithmetic."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from fae.metrics import (
    PixelMetrics,
    average_precision,
    best_dice,
    dice,
    dice_at_fpr,
    per_subject_dice,
    quantize,
    roc_auc,
    slice_metrics,
    threshold_at_fpr,
)

TOL = 1e-9
REPO = Path(__file__).resolve().parents[1]


def tied_data(seed: int, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Scores rounded to 2 decimals (many ties), higher on positives, plus a 2-D shape."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.15
    scores = np.round(rng.random(n) * 0.6 + 0.4 * labels * rng.random(n), 2)
    return scores.reshape(50, -1), labels.reshape(50, -1)


def wide_data(seed: int, n: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """float32 scores spanning negatives and values above 1."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.05
    scores = (rng.standard_normal(n) * 3.0 + 4.0 * labels).astype(np.float32)
    return scores, labels


def sweep(scores: np.ndarray, labels: np.ndarray) -> list[tuple[float, float, float]]:
    """(threshold, FPR, Dice) at every distinct score, counted directly from the predictions."""
    s, y = np.ravel(scores), np.ravel(labels).astype(bool)
    rows = []
    for t in np.unique(s):
        pred = s >= t
        fpr = np.count_nonzero(pred & ~y) / np.count_nonzero(~y)
        d = 2 * np.count_nonzero(pred & y) / (np.count_nonzero(pred) + np.count_nonzero(y))
        rows.append((float(t), fpr, d))
    return rows


def oracle_threshold(scores: np.ndarray, labels: np.ndarray, max_fpr: float) -> float:
    allowed = [t for t, fpr, _ in sweep(scores, labels) if fpr <= max_fpr]
    return min(allowed) if allowed else float(np.nextafter(np.max(scores), np.inf))


def oracle_dice(scores: np.ndarray, labels: np.ndarray, t: float) -> float:
    pred, y = np.ravel(scores) >= t, np.ravel(labels).astype(bool)
    denom = np.count_nonzero(pred) + np.count_nonzero(y)
    return 2 * np.count_nonzero(pred & y) / denom if denom else float("nan")


@pytest.mark.parametrize("seed", range(5))
def test_ap_and_auroc_match_sklearn_with_ties(seed: int) -> None:
    scores, labels = tied_data(seed)
    assert np.unique(scores).size < scores.size / 10  # the data really is full of ties
    y, s = labels.ravel(), scores.ravel()
    assert average_precision(scores, labels) == pytest.approx(
        average_precision_score(y, s), abs=TOL
    )
    assert roc_auc(scores, labels) == pytest.approx(roc_auc_score(y, s), abs=TOL)


@pytest.mark.parametrize("seed", range(3))
def test_mask_restricts_evaluation(seed: int) -> None:
    scores, labels = tied_data(seed)
    mask = np.random.default_rng(100 + seed).random(scores.shape) < 0.6
    y, s = labels[mask], scores[mask]
    assert average_precision(scores, labels, mask=mask) == pytest.approx(
        average_precision_score(y, s), abs=TOL
    )
    assert roc_auc(scores, labels, mask=mask) == pytest.approx(roc_auc_score(y, s), abs=TOL)
    d, t = dice_at_fpr(scores, labels, 0.1, mask=mask)
    assert t == oracle_threshold(s, y, 0.1)
    assert d == pytest.approx(oracle_dice(s, y, t), abs=TOL)


def test_integer_labels_and_scores_are_accepted() -> None:
    scores, labels = tied_data(7)
    ints = (scores * 100).astype(np.int64)
    assert roc_auc(ints, labels.astype(np.uint8)) == pytest.approx(
        roc_auc_score(labels.ravel(), ints.ravel()), abs=TOL
    )


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("max_fpr", [0.0, 0.01, 0.05, 0.3])
def test_threshold_and_dice_match_brute_force(seed: int, max_fpr: float) -> None:
    scores, labels = tied_data(seed)
    t = threshold_at_fpr(scores, labels, max_fpr)
    assert t == oracle_threshold(scores, labels, max_fpr)

    rows = sweep(scores, labels)
    values = [row[0] for row in rows]
    fpr_at = dict((row[0], row[1]) for row in rows)
    assert t in fpr_at
    assert fpr_at[t] <= max_fpr
    lower = [v for v in values if v < t]
    if lower:
        assert fpr_at[max(lower)] > max_fpr

    d, t2 = dice_at_fpr(scores, labels, max_fpr)
    assert t2 == t
    assert d == pytest.approx(oracle_dice(scores, labels, t), abs=TOL)


@pytest.mark.parametrize("seed", range(4))
def test_best_dice_matches_brute_force(seed: int) -> None:
    scores, labels = tied_data(seed)
    d, t = best_dice(scores, labels)
    assert d == pytest.approx(max(row[2] for row in sweep(scores, labels)), abs=TOL)
    assert oracle_dice(scores, labels, t) == pytest.approx(d, abs=TOL)


def test_threshold_when_no_value_meets_the_fpr() -> None:
    scores = np.array([0.9, 0.9, 0.9, 0.1], dtype=np.float32)
    labels = np.array([1, 0, 0, 0], dtype=bool)
    d, t = dice_at_fpr(scores, labels, 0.05)
    assert t == float(np.nextafter(np.float32(0.9), np.float32(np.inf)))
    assert not np.any(scores >= t)
    assert d == 0.0


def test_dice_and_per_subject_dice() -> None:
    assert dice([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.5)
    assert dice([[1, 1], [1, 0]], [[1, 1], [0, 0]]) == pytest.approx(0.8)
    assert math.isnan(dice(np.zeros(5), np.zeros(5, dtype=bool)))
    assert dice([1, 1, 0, 0], [1, 0, 1, 0], mask=[True, False, True, True]) == pytest.approx(2 / 3)

    rng = np.random.default_rng(3)
    subjects = []
    for _ in range(4):
        labels = rng.random((6, 7)) < 0.3
        subjects.append((rng.random((6, 7)) + 0.5 * labels, labels))
    subjects.append((np.zeros((6, 7)), np.zeros((6, 7), dtype=bool)))  # empty and unpredicted
    got = per_subject_dice(subjects, 0.8)
    assert len(got) == 5
    for (s, y), d in zip(subjects[:4], got[:4], strict=True):
        assert d == pytest.approx(oracle_dice(s, y, 0.8), abs=TOL)
    assert math.isnan(got[4])

    mask = np.zeros((6, 7), dtype=bool)
    mask[:3] = True
    s, y = subjects[0]
    [masked] = per_subject_dice([(s, y, mask)], 0.8)
    assert masked == pytest.approx(oracle_dice(s[:3], y[:3], 0.8), abs=TOL)


def test_slice_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(11)
    labels = rng.random(400) < 0.3
    scores = np.round(rng.random(400) + 0.3 * labels, 1)
    got = slice_metrics(scores, labels)
    assert set(got) == {"auroc", "ap"}
    assert got["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=TOL)
    assert got["ap"] == pytest.approx(average_precision_score(labels, scores), abs=TOL)


def test_undefined_metrics_are_nan() -> None:
    scores = np.array([0.1, 0.5, 0.7])
    no_pos = np.zeros(3, dtype=bool)
    assert math.isnan(average_precision(scores, no_pos))
    assert math.isnan(roc_auc(scores, no_pos))
    assert all(math.isnan(v) for v in best_dice(scores, no_pos))
    all_pos = np.ones(3, dtype=bool)
    assert math.isnan(roc_auc(scores, all_pos))
    assert math.isnan(threshold_at_fpr(scores, all_pos))
    assert average_precision(scores, all_pos) == pytest.approx(1.0)
    assert best_dice(scores, all_pos) == (1.0, 0.1)  # best at the lowest threshold


def test_invalid_input_raises() -> None:
    scores, labels = np.array([0.1, np.nan, 0.3]), np.array([1, 1, 0])
    for fn in (average_precision, roc_auc, threshold_at_fpr, dice_at_fpr, best_dice):
        with pytest.raises(ValueError, match="NaN"):
            fn(scores, labels)
        with pytest.raises(ValueError, match="shape"):
            fn(np.zeros(3), np.zeros(4))
    # a NaN outside the mask is never evaluated
    assert average_precision(scores, labels, mask=[True, False, True]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shape"):
        average_precision(np.zeros(3), np.zeros(3), mask=np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((2, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="max_fpr"):
        threshold_at_fpr(np.array([0.1, 0.2]), np.array([0, 1]), 1.5)
    with pytest.raises(ValueError):
        quantize([1.0, np.nan])
    with pytest.raises(ValueError):
        per_subject_dice([(np.zeros(2), np.zeros(2))], float("nan"))


def lower_edge_oracle(x: np.ndarray, mantissa_bits: int) -> np.ndarray:
    """Bin lower edges by frexp arithmetic, for zero and normal floats.

    A normal float with |x| in [2**(e-1), 2**e) has ulp 2**(e-24); its bin spans
    2**(e-1-mantissa_bits). Positives round their magnitude down; negatives go to the most
    negative float of their bin (magnitude rounded down, plus a bin, minus an ulp).
    """
    a = np.abs(x.astype(np.float64))
    _, e = np.frexp(a)
    step = np.ldexp(1.0, e - 1 - mantissa_bits)
    lo = np.floor(a / step) * step
    edge = np.where(x > 0, lo, -(lo + step - np.ldexp(1.0, e - 24)))
    return np.where(a == 0, 0.0, edge)


@pytest.mark.parametrize("mantissa_bits", [0, 4, 12, 23])
def test_quantize_is_monotone_idempotent_lower_edge(mantissa_bits: int) -> None:
    rng = np.random.default_rng(mantissa_bits)
    x = np.concatenate(
        [
            (rng.standard_normal(20000) * 10.0 ** rng.integers(-6, 7, 20000)).astype(np.float32),
            np.array([0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 3e38, -3e38], dtype=np.float32),
        ]
    )
    q = quantize(x, mantissa_bits)
    assert q.dtype == np.float32 and q.shape == x.shape
    np.testing.assert_array_equal(q.astype(np.float64), lower_edge_oracle(x, mantissa_bits))
    assert np.all(q <= x)
    np.testing.assert_array_equal(quantize(q, mantissa_bits), q)
    order = np.argsort(x, kind="stable")
    assert np.all(np.diff(q[order]) >= 0)
    # thresholding at any bin edge gives the same prediction on raw and quantised scores
    for e in rng.choice(q, 50):
        np.testing.assert_array_equal(x >= e, q >= e)
    if mantissa_bits == 23:
        np.testing.assert_array_equal(q, x)
    assert quantize(np.float32(1.3), 4).shape == ()


def chunks(n: int, seed: int) -> list[slice]:
    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, n), 6, replace=False))
    bounds = [0, *cuts.tolist(), n]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@pytest.mark.parametrize("mantissa_bits", [4, 12])
@pytest.mark.parametrize("seed", range(3))
def test_stream_equals_exact_on_quantized_scores(mantissa_bits: int, seed: int) -> None:
    scores, labels = wide_data(seed)
    assert scores.min() < 0 and scores.max() > 1
    acc = PixelMetrics(mantissa_bits)
    for step in chunks(scores.size, seed):
        acc.update(scores[step], labels[step])
    got = acc.compute(0.05)

    q = quantize(scores, mantissa_bits)
    assert np.unique(q).size < np.unique(scores).size  # binning really merged values
    assert got["n_pixels"] == scores.size
    assert got["n_positive"] == np.count_nonzero(labels)
    assert got["ap"] == pytest.approx(average_precision_score(labels, q), abs=TOL)
    assert got["auroc"] == pytest.approx(roc_auc_score(labels, q), abs=TOL)
    d, t = dice_at_fpr(q, labels, 0.05)
    assert (got["dice_at_fpr"], got["threshold_at_fpr"]) == pytest.approx((d, t), abs=TOL)
    bd, bt = best_dice(q, labels)
    assert (got["best_dice"], got["best_dice_threshold"]) == pytest.approx((bd, bt), abs=TOL)
    # thresholds are bin edges: applied to the raw scores they give the same segmentation
    assert oracle_dice(scores, labels, got["threshold_at_fpr"]) == pytest.approx(
        got["dice_at_fpr"], abs=TOL
    )
    raw_fpr = np.count_nonzero((scores >= got["threshold_at_fpr"]) & ~labels) / np.sum(~labels)
    assert raw_fpr <= 0.05


def test_stream_with_mask_reset_and_shapes() -> None:
    scores, labels = wide_data(5, n=4 * 10 * 10 * 12)
    vol, lab = scores.reshape(4, 10, 10, 12), labels.reshape(4, 10, 10, 12)
    mask = np.random.default_rng(5).random(vol.shape) < 0.7
    acc = PixelMetrics(8)
    acc.update(np.ones(3, dtype=np.float32), np.ones(3, dtype=bool))
    acc.reset()
    for i in range(4):  # one subject volume at a time, as float64
        acc.update(vol[i].astype(np.float64), lab[i], mask=mask[i])
    got = acc.compute()
    q, y = quantize(vol[mask], 8), lab[mask]
    assert got["n_pixels"] == y.size
    assert got["ap"] == pytest.approx(average_precision(q, y), abs=TOL)
    assert got["auroc"] == pytest.approx(roc_auc(q, y), abs=TOL)
    assert got["best_dice"] == pytest.approx(best_dice(q, y)[0], abs=TOL)


def test_stream_rejects_bad_input_without_partial_counts() -> None:
    acc = PixelMetrics(4)
    acc.update(np.array([0.2, 0.8], dtype=np.float32), np.array([False, True]))
    bad = np.full(5_000_000, 0.5, dtype=np.float32)  # several internal sub-chunks
    bad[-1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        acc.update(bad, np.zeros(bad.size, dtype=bool))
    with pytest.raises(ValueError, match="shape"):
        acc.update(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError):
        acc.update(np.array([1e300]), np.array([True]))  # overflows float32
    got = acc.compute()
    assert got["n_pixels"] == 2 and got["auroc"] == 1.0
    empty = PixelMetrics(4).compute()
    assert empty["n_pixels"] == 0 and math.isnan(empty["ap"])
    for bits in (-1, 24, 2.5):
        with pytest.raises(ValueError, match="mantissa_bits"):
            PixelMetrics(bits)


@pytest.mark.benchmark
def test_memory_benchmark_script() -> None:
    script = REPO / "benchmarks" / "metrics_memory.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
