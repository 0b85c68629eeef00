"""Anomaly-localisation metrics: exact ones, and a streaming accumulator with bounded memory.

Every metric here comes from one place, :func:`_summarize`, which reads how many positive and
negative pixels sit at each distinct score value. The exact functions build that tally with
``np.unique``; :class:`PixelMetrics` builds it from two histograms over float32 score bins. Both
therefore give identical numbers on the same scores, and the streaming numbers are the exact
numbers of :func:`quantize`-d scores.

Conventions: arrays of any shape are flattened; labels are cast to bool; an optional boolean
``mask`` keeps only the pixels where it is True; a pixel is predicted anomalous when
``score >= threshold``. Metrics that are undefined for the data (AP without positives, AUROC
without one of the classes, Dice of two empty sets) are ``nan`` rather than an error.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.typing import ArrayLike

_SUB_CHUNK = 1 << 21  # pixels per internal step of PixelMetrics.update: bounds temporaries
_SIGN = 0x80000000


def _check_finite(scores: np.ndarray) -> None:
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")


def _check_max_fpr(max_fpr: float) -> None:
    if not 0.0 <= max_fpr <= 1.0:
        raise ValueError(f"max_fpr must lie in [0, 1], got {max_fpr}")


def _check_mantissa_bits(mantissa_bits: int) -> int:
    if not isinstance(mantissa_bits, int | np.integer) or not 0 <= mantissa_bits <= 23:
        raise ValueError(f"mantissa_bits must be an integer in 0..23, got {mantissa_bits!r}")
    return int(mantissa_bits)


def _flatten(
    scores: ArrayLike, labels: ArrayLike, mask: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Flatten scores, labels (as bool) and mask (as bool) after checking their shapes agree."""
    s, y = np.asarray(scores), np.asarray(labels)
    if s.shape != y.shape:
        raise ValueError(f"scores shape {s.shape} does not match labels shape {y.shape}")
    m = None
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != s.shape:
            raise ValueError(f"mask shape {m.shape} does not match scores shape {s.shape}")
        m = m.astype(bool, copy=False).ravel()
    return s.ravel(), y.astype(bool, copy=False).ravel(), m


def _select(
    scores: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The finite floating scores and bool labels of the pixels to evaluate, flattened."""
    s, y, m = _flatten(scores, labels, mask)
    if m is not None:
        s, y = s[m], y[m]
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    _check_finite(s)
    return s, y


def _tally(
    scores: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct score values (ascending) with the positive and negative pixel count at each."""
    s, y = _select(scores, labels, mask)
    # Two value sorts (all pixels, positives) instead of an argsort: several times faster.
    values, total = np.unique(s, return_counts=True)
    pos_values, pos_counts = np.unique(s[y], return_counts=True)
    pos = np.zeros_like(total)
    pos[np.searchsorted(values, pos_values)] = pos_counts
    return values, pos, total - pos


def _summarize(
    values: np.ndarray, pos: np.ndarray, neg: np.ndarray, max_fpr: float = 0.05
) -> dict[str, float | int]:
    """All metrics from per-value counts, taking every distinct value as a threshold.

    ``values`` are distinct and ascending; ``pos[k]``/``neg[k]`` count the positive/negative
    pixels whose score equals ``values[k]``. Thresholds are visited from the highest down, so
    cumulative sums give the pixels predicted positive (``score >= value``) at each of them.
    """
    _check_max_fpr(max_fpr)
    v = values[::-1]
    # Counts as float64: exact up to 2**53 pixels, and no int-to-float conversion per operation.
    p, n = pos[::-1].astype(np.float64), neg[::-1].astype(np.float64)
    tp, fp = np.cumsum(p), np.cumsum(n)
    n_pos = int(tp[-1]) if tp.size else 0
    n_neg = int(fp[-1]) if fp.size else 0
    nan = float("nan")
    out: dict[str, float | int] = {
        "ap": nan,
        "auroc": nan,
        "threshold_at_fpr": nan,
        "dice_at_fpr": nan,
        "best_dice": nan,
        "best_dice_threshold": nan,
        "n_pixels": n_pos + n_neg,
        "n_positive": n_pos,
    }
    if n_pos:
        predicted = tp + fp
        # AP as sklearn: sum over thresholds of (recall step) * precision; the step is p / n_pos.
        out["ap"] = float(np.dot(p, tp / predicted) / n_pos)
        predicted += n_pos
        dice = 2.0 * tp / predicted
        best = int(np.argmax(dice))
        out["best_dice"], out["best_dice_threshold"] = float(dice[best]), float(v[best])
    if n_pos and n_neg:
        # Trapezoid under the ROC: each negative at value k scores 1 per positive strictly above
        # it and 1/2 per positive tied with it: n * (tp - p + p / 2), doubled to whole numbers.
        out["auroc"] = float(np.dot(n, 2.0 * tp - p) / (2.0 * n_pos * n_neg))
    if n_neg:
        # The FPR only grows as the threshold drops, so the allowed thresholds are a prefix.
        k = int(np.count_nonzero(fp / n_neg <= max_fpr))
        if k:
            t, tp_t, fp_t = v[k - 1], tp[k - 1], fp[k - 1]
        else:  # even the top score lets too many negatives through: predict nothing
            t, tp_t, fp_t = np.nextafter(v[0], np.inf), 0.0, 0.0
        out["threshold_at_fpr"] = float(t)
        denom = tp_t + fp_t + n_pos
        out["dice_at_fpr"] = float(2.0 * tp_t / denom) if denom else nan
    return out


def average_precision(
    scores: ArrayLike, labels: ArrayLike, *, mask: ArrayLike | None = None
) -> float:
    """Pixel-wise average precision, equal to sklearn's ``average_precision_score``.

    Tied scores form one threshold (no interpolation); nan when there are no positives.
    """
    return float(_summarize(*_tally(scores, labels, mask))["ap"])


def roc_auc(scores: ArrayLike, labels: ArrayLike, *, mask: ArrayLike | None = None) -> float:
    """Area under the ROC curve, equal to sklearn's ``roc_auc_score`` (ties count one half).

    nan when the labels hold only one class.
    """
    return float(_summarize(*_tally(scores, labels, mask))["auroc"])


def threshold_at_fpr(
    scores: ArrayLike, labels: ArrayLike, max_fpr: float = 0.05, *, mask: ArrayLike | None = None
) -> float:
    """The lowest distinct score ``t`` whose false-positive rate ``P(score >= t | negative)``
    is at most ``max_fpr``: the operating point usually reported for anomaly segmentation.

    When even the highest score exceeds ``max_fpr``, the next float above it (nothing is
    predicted positive). nan when there are no negatives.
    """
    return float(_summarize(*_tally(scores, labels, mask), max_fpr)["threshold_at_fpr"])


def dice(pred: ArrayLike, target: ArrayLike, *, mask: ArrayLike | None = None) -> float:
    """Dice overlap ``2|P & T| / (|P| + |T|)`` of two binary maps; nan when both are empty."""
    p, t, m = _flatten(pred, target, mask)
    p = p.astype(bool, copy=False)
    if m is not None:
        p, t = p[m], t[m]
    denom = np.count_nonzero(p) + np.count_nonzero(t)
    return 2.0 * np.count_nonzero(p & t) / denom if denom else float("nan")


def dice_at_fpr(
    scores: ArrayLike, labels: ArrayLike, max_fpr: float = 0.05, *, mask: ArrayLike | None = None
) -> tuple[float, float]:
    """``(dice, threshold)`` with the threshold from :func:`threshold_at_fpr`."""
    out = _summarize(*_tally(scores, labels, mask), max_fpr)
    return float(out["dice_at_fpr"]), float(out["threshold_at_fpr"])


def best_dice(
    scores: ArrayLike, labels: ArrayLike, *, mask: ArrayLike | None = None
) -> tuple[float, float]:
    """``(dice, threshold)`` maximising Dice over every distinct score as threshold.

    An upper bound on any thresholded segmentation (it peeks at the labels); on ties the
    highest threshold wins. nan for both when there are no positives.
    """
    out = _summarize(*_tally(scores, labels, mask))
    return float(out["best_dice"]), float(out["best_dice_threshold"])


def per_subject_dice(
    maps: Iterable[tuple[ArrayLike, ArrayLike] | tuple[ArrayLike, ArrayLike, ArrayLike]],
    threshold: float,
) -> list[float]:
    """Dice of ``score >= threshold`` against the labels, one value per subject.

    Each item is ``(scores, labels)`` or ``(scores, labels, mask)``. The comparison is made in
    float64, so a float64 threshold is never rounded to the scores' precision. A subject with
    neither positives nor predictions gets nan.
    """
    if np.isnan(threshold):
        raise ValueError("threshold is NaN")
    t = np.float64(threshold)
    result = []
    for item in maps:
        s, y = _select(*item)
        result.append(dice(s >= t, y))
    return result


def slice_metrics(slice_scores: ArrayLike, slice_labels: ArrayLike) -> dict[str, float]:
    """Slice-level detection: ``{"auroc", "ap"}`` of one score per slice against its label.

    Equal to sklearn's ``roc_auc_score`` and ``average_precision_score``.
    """
    out = _summarize(*_tally(slice_scores, slice_labels))
    return {"auroc": float(out["auroc"]), "ap": float(out["ap"])}


def _float_to_key(x: np.ndarray) -> np.ndarray:
    """uint32 keys whose order is the value order of the float32 scores (-0.0 folded into +0.0).

    Positive floats get the sign bit set; negative floats have all bits inverted, which reverses
    their magnitude order and puts them below every positive.
    """
    u = (x + np.float32(0.0)).view(np.uint32)  # -0.0 + 0.0 == +0.0; also a fresh array
    flip = (u.view(np.int32) >> 31).view(np.uint32)  # all ones for negatives, else zero
    flip |= np.uint32(_SIGN)
    u ^= flip
    return u


def _key_to_float(key: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_float_to_key`."""
    return np.where(key >= _SIGN, key ^ np.uint32(_SIGN), ~key).view(np.float32)


def quantize(scores: ArrayLike, mantissa_bits: int = 12) -> np.ndarray:
    """Round float32 scores down to the lower edge of their :class:`PixelMetrics` bin.

    A bin holds the floats sharing sign, exponent and top ``mantissa_bits`` mantissa bits; its
    lower edge is its smallest value (for positives the lower mantissa bits are zero, for
    negatives they are all one). Monotone and idempotent; ``x >= e`` equals ``quantize(x) >= e``
    for every edge ``e``, so thresholds from the binned metrics apply to the raw scores unchanged.
    Scores are converted to float32 first; NaN or infinite scores raise ``ValueError``.
    """
    shift = 23 - _check_mantissa_bits(mantissa_bits)
    x = np.asarray(scores, dtype=np.float32)
    _check_finite(x)
    key = _float_to_key(x.reshape(-1))
    key >>= shift
    key <<= shift
    return _key_to_float(key).reshape(x.shape)


class PixelMetrics:
    """Streaming pixel metrics over test sets too large to hold (BraTS: ~4e8 pixels).

    Each float32 score maps to a monotone uint32 key; the key's top ``9 + mantissa_bits`` bits
    (sign, exponent, top mantissa bits) pick a bin, and two int64 histograms count the positive
    and negative pixels per bin. :meth:`compute` runs the same core as the exact functions on
    the occupied bins, each taken at its lower-edge value.

    Exactness: the results are EXACTLY those of the exact functions on
    ``quantize(scores, mantissa_bits)``. Scores in one bin (within a relative 2**-mantissa_bits
    of each other) become tied; the order between different bins is exact. Thresholds returned
    are bin edges, so ``score >= threshold`` on the raw scores reproduces the binned prediction.

    Memory: ``2 * 2**(9 + mantissa_bits) * 8`` bytes of histogram (32 MiB at the default 12),
    whatever the pixel count, plus temporaries for at most ``2**21`` pixels at a time.
    Each added mantissa bit doubles it, so values above ~16 are impractical.
    """

    def __init__(self, mantissa_bits: int = 12) -> None:
        self.mantissa_bits = _check_mantissa_bits(mantissa_bits)
        self._shift = 23 - self.mantissa_bits
        # Row: bin (ascending score). Column 0: negatives, column 1: positives.
        self._counts = np.zeros((1 << (9 + self.mantissa_bits), 2), dtype=np.int64)

    def reset(self) -> None:
        """Forget every pixel seen so far."""
        self._counts.fill(0)

    def update(self, scores: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> None:
        """Add a chunk of any shape and size; the state is untouched if the chunk is invalid."""
        s, y, m = _flatten(scores, labels, mask)
        steps = [slice(i, i + _SUB_CHUNK) for i in range(0, s.size, _SUB_CHUNK)]
        for step in steps:  # validate everything first, so a bad chunk leaves no partial counts
            _check_finite(self._sub_chunk(s, y, m, step)[0])
        flat = self._counts.reshape(-1)
        for step in steps:
            x, lab = self._sub_chunk(s, y, m, step)
            key = _float_to_key(x)
            key >>= self._shift
            index = key.astype(np.intp)
            index <<= 1
            index |= lab
            flat += np.bincount(index, minlength=flat.size)

    @staticmethod
    def _sub_chunk(
        s: np.ndarray, y: np.ndarray, m: np.ndarray | None, step: slice
    ) -> tuple[np.ndarray, np.ndarray]:
        x, lab = s[step], y[step]
        if m is not None:
            x, lab = x[m[step]], lab[m[step]]
        with np.errstate(over="ignore"):  # float64 beyond float32 range becomes inf, then rejected
            return x.astype(np.float32, copy=False), lab

    def compute(self, max_fpr: float = 0.05) -> dict[str, float | int]:
        """``ap``, ``auroc``, ``threshold_at_fpr``, ``dice_at_fpr``, ``best_dice``,
        ``best_dice_threshold``, ``n_pixels`` and ``n_positive`` over everything seen."""
        occupied = np.flatnonzero(self._counts.any(axis=1))
        edges = _key_to_float(occupied.astype(np.uint32) << np.uint32(self._shift))
        return _summarize(edges, self._counts[occupied, 1], self._counts[occupied, 0], max_fpr)

    def pr_curve(self, n_points: int = 100) -> dict[str, list[float]]:
        """Precision and recall at up to ``n_points`` thresholds spread over the score bins,
        from the highest threshold down (for plots; the metrics above use every bin)."""
        occupied = np.flatnonzero(self._counts.any(axis=1))[::-1]
        tp = np.cumsum(self._counts[occupied, 1].astype(np.float64))
        fp = np.cumsum(self._counts[occupied, 0].astype(np.float64))
        if not tp.size or tp[-1] == 0:
            return {"recall": [], "precision": []}
        pick = np.unique(np.linspace(0, tp.size - 1, n_points).round().astype(int))
        return {
            "recall": [round(float(v), 5) for v in tp[pick] / tp[-1]],
            "precision": [round(float(v), 5) for v in tp[pick] / (tp[pick] + fp[pick])],
        }
