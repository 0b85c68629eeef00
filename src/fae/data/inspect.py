"""What a dataset holds: subjects, modalities, shapes, spacing, intensities, masks."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from fae.data.brainmask import has_geometry, looks_skull_stripped
from fae.data.discover import Dataset
from fae.data.volume import check_same_grid


@dataclass(frozen=True)
class ScanInfo:
    """One image of one subject, as read from disk."""

    subject: str
    modality: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...] | None  # None: identity affine, spacing unknown
    orientation: str
    vmin: float
    vmax: float
    seg: bool
    lesion_voxels: int
    brainmask: bool
    auto_mask: str  # where --brain-mask auto takes the mask from: given, nonzero or hd-bet
    split: str | None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def inspect_dataset(dataset: Dataset, progress: bool = True) -> list[ScanInfo]:
    """Read every image (and segmentation/brain mask) once and describe it.

    Raises :class:`~fae.errors.FaeInputError` on the first unreadable file or mismatched shape.
    """
    rows = []
    for subject in tqdm(dataset.subjects, desc="reading", unit="subject", disable=not progress):
        seg = subject.seg.load() if subject.seg else None
        mask = subject.brainmask.load() if subject.brainmask else None
        for modality, source in sorted(subject.images.items()):
            vol = source.load()
            known = has_geometry(vol)
            if seg is not None:
                check_same_grid(vol, seg, "segmentation")
            if mask is not None:
                check_same_grid(vol, mask, "brain mask")
            rows.append(
                ScanInfo(
                    subject=subject.id,
                    modality=modality,
                    shape=vol.data.shape,
                    spacing=tuple(round(s, 3) for s in vol.spacing) if known else None,
                    orientation=vol.orientation if known else "unknown",
                    vmin=float(vol.data.min()),
                    vmax=float(vol.data.max()),
                    seg=seg is not None,
                    lesion_voxels=int(np.count_nonzero(seg.data)) if seg is not None else 0,
                    brainmask=mask is not None,
                    auto_mask="given"
                    if mask is not None
                    else "nonzero"
                    if looks_skull_stripped(vol)
                    else "hd-bet",
                    split=subject.split,
                )
            )
    return rows


def format_report(dataset: Dataset, rows: list[ScanInfo], per_subject: bool = True) -> str:
    """A human-readable summary, then (optionally) one line per scan."""
    n = len(dataset.subjects)
    n_seg = sum(s.seg is not None for s in dataset.subjects)
    n_mask = sum(s.brainmask is not None for s in dataset.subjects)
    with_lesion = len({r.subject for r in rows if r.lesion_voxels > 0})
    lines = [
        f"dataset:       {dataset.root}",
        f"layout:        {dataset.layout}",
        f"subjects:      {n}",
        f"modalities:    {', '.join(dataset.modalities)}",
        f"segmentations: {n_seg} of {n} subjects ({with_lesion} with lesion voxels)",
        f"brain masks:   {n_mask} of {n} subjects given; --brain-mask auto takes "
        + ", ".join(f"{k} for {v}" for k, v in sorted(Counter(r.auto_mask for r in rows).items()))
        + " scans",
    ]
    splits = Counter(s.split for s in dataset.subjects if s.split)
    if splits:
        lines.append("splits:        " + ", ".join(f"{k} {v}" for k, v in sorted(splits.items())))
    for label, values in (
        ("shapes", [r.shape for r in rows]),
        ("spacing (mm)", [r.spacing for r in rows]),
        ("orientation", [r.orientation for r in rows]),
    ):
        common = Counter(_fmt(t) for t in values)
        text = ", ".join(f"{k} ({c})" for k, c in common.most_common(4))
        more = len(common) - 4
        lines.append(f"{label + ':':<15}{text}" + (f", +{more} more" if more > 0 else ""))
    if rows:
        lo, hi = min(r.vmin for r in rows), max(r.vmax for r in rows)
        lines.append(f"intensities:   {lo:g} .. {hi:g}")
    if per_subject:
        lines.append("")
        lines.append(
            f"{'subject':<32} {'modality':<9} {'shape':<14} {'spacing':<14} {'orient':<6} "
            f"{'min':>9} {'max':>9} {'seg':>4} {'lesion':>8} {'mask':>7}"
        )
        for r in rows:
            lines.append(
                f"{r.subject:<32} {r.modality:<9} {'x'.join(map(str, r.shape)):<14} "
                f"{_fmt(r.spacing):<14} {r.orientation:<6} "
                f"{r.vmin:>9.4g} {r.vmax:>9.4g} {'yes' if r.seg else 'no':>4} "
                f"{r.lesion_voxels:>8} {r.auto_mask:>7}"
            )
    return "\n".join(lines)


def _fmt(value: tuple | str | None) -> str:
    if value is None:
        return "unknown"
    return "x".join(f"{v:g}" for v in value) if isinstance(value, tuple) else value
