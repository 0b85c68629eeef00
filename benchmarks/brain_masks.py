"""How good are HD-BET's brain masks here, and what do they cost?

1. ``reference``: HD-BET (forced, fast and accurate mode) on the skull-stripped BRATS 2013 and
   MS volumes in ``../shared/data``, against the masks they come with (BRATS: ``brainmask``;
   MS: the non-zero voxels of the stripped FLAIR): Dice, recall, precision, seconds.
2. ``lgg``: on every LGG FLAIR and T1 patient (skull-on, no geometry in the files): the share of
   lesion voxels inside HD-BET's mask (tumours lie inside the brain), the brain volume at the
   guessed voxel size, the mask's share of the head (Otsu), and where a patient has both, the
   Dice of the FLAIR mask against the T1 mask (the two share the voxel grid).
3. ``spacing``: what the guessed geometry does: masks of LGG FLAIR patients with the guessed
   slice thickness × 0.5, 0.75, 1.5, and with the in-plane axes taken the other way round
   (the identity affine read as RAS), against the guess.
4. ``timing``: seconds per LGG volume (20, 36 and 88 slices) in fast and accurate mode, and
   with mirrored test-time augmentation on the smallest, without the cache.

Figures: ``docs/brainmask_lgg.png`` (mask outlines on LGG slices) and
``docs/brainmask_spacing.png`` (the spacing guess). Results go to ``OUT/results.json`` as they
are made, so that a rerun skips finished parts; HD-BET masks of LGG come from the cache that
``fae data skullstrip`` / ``fae train`` fill.

    python benchmarks/brain_masks.py --out benchmark-output/brain-masks
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from fae.data.brainmask import (
    foreground,
    hd_bet_geometry,
    hd_bet_mask,
    hd_bet_network,
    intensity_mask,
)
from fae.data.cache import default_cache_dir
from fae.data.discover import discover
from fae.data.volume import Volume, load_nifti
from fae.device import resolve_device
from fae.io import atomic_path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DOCS = Path(__file__).resolve().parents[1] / "docs"
SPACING_FACTORS = (0.5, 0.75, 1.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=SHARED)
    parser.add_argument("--out", type=Path, default=Path("benchmark-output/brain-masks"))
    parser.add_argument("--parts", default="reference,lgg,spacing,timing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--spacing-patients", type=int, default=6)
    args = parser.parse_args()
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    cache = default_cache_dir()

    def save() -> None:
        args.out.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(results, indent=1))

    parts = args.parts.split(",")
    if "reference" in parts:
        reference(args.data_root, results.setdefault("reference", {}), args.device, save)
    if "lgg" in parts:
        for name in ("lgg-flair", "lgg-t1"):
            lgg(args.data_root / name, results.setdefault(name, {}), cache, args.device, save)
        results["lgg-agreement"] = agreement(args.data_root, cache, args.device)
        save()
        montage(args.data_root, cache, args.device, DOCS / "brainmask_lgg.png")
    if "spacing" in parts:
        spacing(args.data_root / "lgg-flair", results, cache, args.device, args, save)
    if "timing" in parts:
        timing(args.data_root / "lgg-flair", results.setdefault("timing", {}), args.device, save)
    print(report(results))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def reference(root: Path, out: dict, device: str, save) -> None:
    """HD-BET against the masks the skull-stripped BRATS and MS volumes come with."""
    cases = []
    for folder in sorted((root / "brats2013-flair").glob("brats_2013_*")):
        cases.append((folder.name, next(folder.glob("Flair*.nii.gz")), folder / "brainmask.nii.gz"))
    for flair in sorted((root / "ms-lesjak").glob("*/FLAIR*.nii.gz")):
        cases.append((flair.parent.name, flair, None))
    for mode in ("fast", "accurate"):
        hd_bet_network(mode, resolve_device(device))  # load the weights before timing
        for name, image_path, mask_path in tqdm(cases, desc=f"reference, {mode}", unit="scan"):
            key = f"{name}/{mode}"
            if key in out:
                continue
            image = load_nifti(image_path)
            truth = load_nifti(mask_path).data > 0 if mask_path else foreground(image.data)
            started = time.perf_counter()
            mask = hd_bet_mask(image, mode, device=device)  # no cache: timed
            seconds = time.perf_counter() - started
            out[key] = {
                "dice": dice(mask, truth),
                "recall": float((mask & truth).sum() / truth.sum()),
                "precision": float((mask & truth).sum() / max(mask.sum(), 1)),
                "seconds": seconds,
                "shape": list(image.data.shape),
            }
            save()


def timing(data: Path, out: dict, device: str, save) -> None:
    """Seconds per volume for each mode (weights loaded beforehand), no cache."""
    by_slices = {}
    for path in sorted(data.glob("*_flair.nii.gz")):
        by_slices.setdefault(load_nifti(path).data.shape[2], path)
    picked = [by_slices[min(by_slices, key=lambda n: abs(n - k))] for k in (20, 36, 88)]
    runs = [(p, "fast", False) for p in picked] + [(p, "accurate", False) for p in picked]
    runs.append((picked[0], "fast", True))
    for path, mode, tta in tqdm(runs, desc="timing", unit="run"):
        image = load_nifti(path)
        key = f"{image.data.shape[2]} slices/{mode}{' tta' if tta else ''}"
        if key in out:
            continue
        hd_bet_network(mode, resolve_device(device))
        started = time.perf_counter()
        hd_bet_mask(image, mode, tta, device=device)
        out[key] = {"scan": path.name, "seconds": time.perf_counter() - started}
        save()


def lgg(data: Path, out: dict, cache: Path, device: str, save) -> None:
    """Per patient: lesion share inside the mask, brain volume, share of the head."""
    dataset = discover(data)
    for subject in tqdm(dataset.subjects, desc=data.name, unit="scan"):
        if subject.id in out:
            continue
        image = next(iter(subject.images.values())).load()
        lesion = subject.seg.load().data > 0
        started = time.perf_counter()
        mask = hd_bet_mask(image, cache_dir=cache, device=device)
        _, voxel = hd_bet_geometry(image)
        head = intensity_mask(image.data)
        out[subject.id] = {
            "lesion_voxels": int(lesion.sum()),
            "lesion_inside": float((mask & lesion).sum() / max(lesion.sum(), 1)),
            "brain_ml": float(mask.sum() * np.prod(voxel) / 1000),
            "share_of_head": float((mask & head).sum() / max(head.sum(), 1)),
            "outside_head": float((mask & ~head).sum() / max(mask.sum(), 1)),
            "slices": int(image.data.shape[2]),
            "seconds": time.perf_counter() - started,  # ~0 when the mask came from the cache
        }
        save()


def agreement(root: Path, cache: Path, device: str) -> dict:
    """Dice of each patient's FLAIR mask against its T1 mask (the same voxel grid)."""
    flair, t1 = discover(root / "lgg-flair"), discover(root / "lgg-t1")
    t1_ids = {s.id for s in t1.subjects}
    scores = {}
    for subject in flair.subjects:
        if subject.id in t1_ids:
            a = hd_bet_mask(subject.images["flair"].load(), cache_dir=cache, device=device)
            b = hd_bet_mask(
                t1.subject(subject.id).images["t1"].load(), cache_dir=cache, device=device
            )
            scores[subject.id] = dice(a, b)
    return scores


def montage(root: Path, cache: Path, device: str, path: Path, n: int = 8) -> None:
    """Mask (green) and head (red) outlines with the lesion (yellow) on FLAIR and T1 slices."""
    flair, t1 = discover(root / "lgg-flair"), discover(root / "lgg-t1")
    t1_ids = {s.id for s in t1.subjects}
    both = [s for s in flair.subjects if s.id in t1_ids]
    picked = [both[i] for i in np.linspace(0, len(both) - 1, n).round().astype(int)]
    figure = Figure(figsize=(2.1 * n, 5.4))
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, n)
    for col, subject in enumerate(picked):
        lesion = subject.seg.load().data > 0
        z = int(np.argmax(lesion.sum(axis=(0, 1))))
        for row, (dataset, modality) in enumerate(((flair, "flair"), (t1, "t1"))):
            image = dataset.subject(subject.id).images[modality].load()
            mask = hd_bet_mask(image, cache_dir=cache, device=device)
            head = intensity_mask(image.data)
            ax = axes[row, col]
            ax.imshow(image.data[:, :, z], cmap="gray")
            ax.contour(head[:, :, z], [0.5], colors="red", linewidths=0.7)
            ax.contour(mask[:, :, z], [0.5], colors="lime", linewidths=0.8)
            ax.contour(lesion[:, :, z], [0.5], colors="yellow", linewidths=0.8)
            ax.set_axis_off()
            ax.set_title(f"{subject.id[5:12]} {modality} z={z}", fontsize=7)
    figure.suptitle(
        "HD-BET brain mask (green), Otsu head mask (red), lesion (yellow); LGG, skull-on",
        fontsize=9,
    )
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=80)


def spacing(data: Path, results: dict, cache: Path, device: str, args, save) -> None:
    """Masks with the guessed slice thickness scaled, against the guess (and a figure)."""
    out = results.setdefault("spacing", {})
    dataset = discover(data)
    by_slices = sorted(dataset.subjects, key=lambda s: s.images["flair"].load().data.shape[2])
    k = args.spacing_patients
    picked = [by_slices[i] for i in np.linspace(0, len(by_slices) - 1, k).round().astype(int)]
    shown = []
    for subject in tqdm(picked, desc="spacing", unit="scan"):
        image = subject.images["flair"].load()
        lesion = subject.seg.load().data > 0
        _, guess = hd_bet_geometry(image)
        base = hd_bet_mask(image, cache_dir=cache, device=device)
        masks = {1.0: base}
        ras = Volume(image.data, np.diag([*guess, 1.0]), None, image.source)
        variants = [(f, image, (guess[0], guess[1], guess[2] * f)) for f in SPACING_FACTORS]
        for factor, volume, voxel in [*variants, ("transposed", ras, None)]:
            mask = hd_bet_mask(volume, spacing=voxel, cache_dir=cache, device=device)
            if factor != "transposed":
                masks[factor] = mask
            out[f"{subject.id}/{factor}"] = {
                "slices": int(image.data.shape[2]),
                "slice_mm": guess[2] * factor if voxel else guess[2],
                "dice_vs_guess": dice(mask, base),
                "lesion_inside": float((mask & lesion).sum() / lesion.sum()),
                "lesion_inside_guess": float((base & lesion).sum() / lesion.sum()),
            }
            save()
        if subject in (picked[0], picked[-1]):
            shown.append((subject.id, image.data, lesion, masks))
    _spacing_figure(shown, DOCS / "brainmask_spacing.png")


def _spacing_figure(shown: list, path: Path) -> None:
    colours = {0.5: "red", 0.75: "orange", 1.0: "lime", 1.5: "cyan"}
    figure = Figure(figsize=(12, 7.2))
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(shown), 4)
    for row, (sid, data, lesion, masks) in enumerate(shown):
        n = data.shape[2]
        for col, z in enumerate(np.linspace(0.15 * n, 0.85 * n, 4).round().astype(int)):
            ax = axes[row, col]
            ax.imshow(data[:, :, z], cmap="gray")
            for factor, mask in masks.items():
                ax.contour(mask[:, :, z], [0.5], colors=colours[factor], linewidths=0.8)
            ax.contour(lesion[:, :, z], [0.5], colors="yellow", linewidths=0.6)
            ax.set_axis_off()
            ax.set_title(f"{sid[5:12]}, {n} slices, z={z}", fontsize=8)
    labels = ", ".join(f"{colours[f]}: {f:g}x" for f in sorted(colours))
    figure.suptitle(f"HD-BET masks with the guessed slice thickness times ({labels})", fontsize=9)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=80)


def report(results: dict) -> str:
    lines = []
    ref = results.get("reference", {})
    if ref:
        lines += [
            "| scan | mode | Dice | recall | precision | seconds |",
            "|---|---|---|---|---|---|",
        ]
        for key, r in ref.items():
            name, mode = key.split("/")
            lines.append(
                f"| {name} | {mode} | {r['dice']:.3f} | {r['recall']:.3f} | "
                f"{r['precision']:.3f} | {r['seconds']:.1f} |"
            )
        for mode in ("fast", "accurate"):
            seconds = [r["seconds"] for k, r in ref.items() if k.endswith(mode)]
            d = [r["dice"] for k, r in ref.items() if k.endswith(mode)]
            lines.append(
                f"{mode}: mean Dice {np.mean(d):.3f}, {np.mean(seconds):.1f} s a volume (CPU)"
            )
        lines.append("")
    for name in ("lgg-flair", "lgg-t1"):
        rows = list(results.get(name, {}).values())
        if not rows:
            continue
        inside = np.array([r["lesion_inside"] for r in rows])
        weights = np.array([r["lesion_voxels"] for r in rows])
        ml = np.array([r["brain_ml"] for r in rows])
        share = np.array([r["share_of_head"] for r in rows])
        lines.append(
            f"{name}: {len(rows)} patients; lesion voxels inside the mask: "
            f"{np.sum(inside * weights) / weights.sum():.4f} of all, per patient mean "
            f"{inside.mean():.4f}, min {inside.min():.3f}, {int((inside < 0.99).sum())} below "
            f"0.99, {int((inside < 0.95).sum())} below 0.95; brain volume at the guessed voxel "
            f"size median {np.median(ml):.0f} ml (IQR {np.percentile(ml, 25):.0f}-"
            f"{np.percentile(ml, 75):.0f}); mask / head {np.median(share):.3f} (median)"
        )
    if results.get("lgg-agreement"):
        d = np.array(list(results["lgg-agreement"].values()))
        lines.append(
            f"FLAIR mask vs T1 mask of the same patient: Dice median {np.median(d):.3f}, "
            f"min {d.min():.3f} ({len(d)} patients)"
        )
    if results.get("spacing"):
        lines += ["", "| slices | factor | slice mm | Dice vs guess | lesion inside (guess) |"]
        lines.append("|---|---|---|---|---|")
        for key, r in results["spacing"].items():
            factor = key.rsplit("/", 1)[1]
            lines.append(
                f"| {r['slices']} | {factor} | {r['slice_mm']:.2f} | {r['dice_vs_guess']:.3f} | "
                f"{r['lesion_inside']:.3f} ({r['lesion_inside_guess']:.3f}) |"
            )
    if results.get("timing"):
        lines += ["", "| LGG volume | HD-BET | seconds |", "|---|---|---|"]
        for key, r in results["timing"].items():
            size, mode = key.split("/")
            lines.append(f"| {size} | {mode} | {r['seconds']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
