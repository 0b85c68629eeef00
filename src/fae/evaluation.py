"""From anomaly maps to the paper's numbers: pixel AP, Dice@5%FPR, best Dice, slice AUROC/AP.

Pixel metrics are computed over the pixels inside the brain mask (the background is trivially
normal and would make a 5 % FPR mean something else for every dataset).
"""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np

from fae.config import SLICE_SCORES
from fae.data.slices import SliceSet
from fae.errors import FaeInputError
from fae.io import atomic_path
from fae.metrics import PixelMetrics, per_subject_dice, slice_metrics


def slice_scores(maps: np.ndarray, masks: np.ndarray, kind: str = "top10") -> np.ndarray:
    """(N,) slice anomaly scores of (N, S, S) maps inside the brain ``masks`` (0 without brain).

    ``"top10"``: the mean of the top 10 % of map values (the FAE paper); ``"top25"``: of the top
    25 % (``best`` on T1); ``"max"``: the maximum (the 2023 benchmark).
    """
    return top_fraction(maps, masks, SLICE_SCORES[kind])


def top_fraction(maps: np.ndarray, masks: np.ndarray, fraction: float) -> np.ndarray:
    """(N,) the mean of the top ``fraction`` (0: the maximum) of each slice's map values inside
    its brain mask; 0 for a slice without brain."""
    scores = np.zeros(len(maps), dtype=np.float64)
    for i, (m, b) in enumerate(zip(maps, masks, strict=True)):
        values = m[b]
        if values.size == 0:
            continue
        k = max(1, int(np.ceil(fraction * values.size)))
        scores[i] = np.partition(values, values.size - k)[-k:].mean()
    return scores


def evaluate_maps(
    slices: SliceSet,
    maps: np.ndarray,
    scores: np.ndarray | None = None,
    max_fpr: float = 0.05,
) -> tuple[dict, list[dict]]:
    """Metrics of anomaly ``maps`` (N, S, S) against ``slices``' segmentations.

    Returns the summary (pixel and slice metrics, counts) and one row per subject
    (Dice at the global 5 %-FPR threshold, lesion pixels, slices).
    """
    if maps.shape != slices.images.shape:
        raise ValueError(f"maps shape {maps.shape} differs from slices {slices.images.shape}")
    if scores is None:
        scores = slice_scores(maps, slices.masks)
    pixel = PixelMetrics()
    for start in range(0, len(slices), 256):
        part = slice(start, start + 256)
        pixel.update(maps[part], slices.segs[part], mask=slices.masks[part])
    result = pixel.compute(max_fpr=max_fpr)
    labels = slices.slice_labels
    slice_result = slice_metrics(scores, labels)
    threshold = result["threshold_at_fpr"]
    per_subject = []
    for i, sid in enumerate(slices.subject_ids):
        sel = slices.subject == i
        if not sel.any():
            continue
        brain = slices.masks[sel]
        (dice,) = per_subject_dice([(maps[sel][brain], slices.segs[sel][brain])], threshold)
        per_subject.append(
            {
                "subject": sid,
                "slices": int(sel.sum()),
                "lesion_slices": int(labels[sel].sum()),
                "lesion_pixels": int(slices.segs[sel].sum()),
                "dice_at_fpr": dice,
            }
        )
    dices = [r["dice_at_fpr"] for r in per_subject if np.isfinite(r["dice_at_fpr"])]
    summary = {
        "pixel_ap": result["ap"],
        "pixel_auroc": result["auroc"],
        "dice_at_fpr": result["dice_at_fpr"],
        "max_fpr": max_fpr,
        "threshold_at_fpr": threshold,
        "best_dice": result["best_dice"],
        "best_dice_threshold": result["best_dice_threshold"],
        "slice_auroc": slice_result["auroc"],
        "slice_ap": slice_result["ap"],
        "mean_subject_dice": float(np.mean(dices)) if dices else float("nan"),
        "n_subjects": len(per_subject),
        "n_slices": len(slices),
        "n_lesion_slices": int(labels.sum()),
        "n_pixels": result["n_pixels"],
        "n_lesion_pixels": result["n_positive"],
        "pr_curve": pixel.pr_curve(),
    }
    return summary, per_subject


def best_and_worst_slices(
    slices: SliceSet, maps: np.ndarray, threshold: float, n: int = 3, min_pixels: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``n`` lesion slices with the highest and the lowest Dice at ``threshold``.

    Only slices with at least ``min_pixels`` lesion pixels compete (fewer if no slice has that
    many), so that tiny lesion tips don't dominate the picture.
    """
    lesion = slices.segs.reshape(len(slices), -1).sum(axis=1)
    candidates = np.flatnonzero((lesion >= min(min_pixels, lesion.max(initial=0))) & (lesion > 0))
    pred = (maps[candidates] >= threshold) & slices.masks[candidates]
    seg = slices.segs[candidates]
    inter = (pred & seg).sum(axis=(1, 2))
    dices = 2 * inter / (pred.sum(axis=(1, 2)) + seg.sum(axis=(1, 2)))
    order = candidates[np.argsort(-dices, kind="stable")]
    return order[:n], order[::-1][:n]


def evaluate_by_kind(
    slices: SliceSet, maps: np.ndarray, kinds: dict[str, str], scores: np.ndarray | None = None
) -> dict[str, dict]:
    """Summaries over all subjects (``"all"``), then over the subjects of each anomaly kind."""
    out = {"all": evaluate_maps(slices, maps, scores)[0]}
    for kind, keep in slices_by_kind(slices, kinds).items():
        kept = None if scores is None else scores[keep]
        out[kind] = evaluate_maps(slices.take(keep), maps[keep], kept)[0]
    return out


def slices_by_kind(slices: SliceSet, kinds: dict[str, str]) -> dict[str, np.ndarray]:
    """Each anomaly kind that ``slices`` has → the boolean mask of its subjects' slices."""
    out = {}
    for kind in sorted(set(kinds.values())):
        ids = [i for i, s in enumerate(slices.subject_ids) if kinds.get(s) == kind]
        keep = np.isin(slices.subject, ids)
        if keep.any():
            out[kind] = keep
    return out


def anomaly_kinds(root: Path) -> dict[str, str]:
    """Subject → anomaly kind from the ``anomalies.csv`` of a synthetic dataset (folder or
    datalist beside it); empty for other data."""
    folder = root.parent if root.is_file() else root
    path = folder / "anomalies.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as fh:
        return {row["subject"]: row["kind"] for row in csv.DictReader(fh)}


SLICE_MAPS = "maps.npz"  # the evaluated slices and their maps, in an evaluation folder


def save_slice_maps(path: Path, slices: SliceSet, maps: np.ndarray) -> Path:
    """Keep what ``fae report``'s slice browser shows: every evaluated slice (uint8), its
    ground truth and brain mask, its map (float16) and where it came from, compressed."""
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.savez_compressed(
            fh,
            images=np.round(np.clip(slices.images, 0, 1) * 255).astype(np.uint8),
            segs=slices.segs,
            masks=slices.masks,
            maps=maps.astype(np.float16),
            subject=slices.subject.astype(np.int32),
            slice_index=slices.slice_index.astype(np.int32),
            subject_ids=np.asarray(slices.subject_ids, dtype=str),
        )
    return path


def load_slice_maps(path: Path) -> tuple[SliceSet, np.ndarray]:
    """The slices and maps that :func:`save_slice_maps` kept (images back in [0, 1])."""
    try:
        with np.load(path, allow_pickle=False) as data:
            slices = SliceSet(
                data["images"].astype(np.float32) / 255,
                data["segs"],
                data["masks"],
                data["subject"],
                data["slice_index"],
                tuple(str(s) for s in data["subject_ids"]),
            )
            maps = data["maps"].astype(np.float32)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise FaeInputError(path, f"cannot read the evaluated maps ({err})") from None
    return slices, maps
