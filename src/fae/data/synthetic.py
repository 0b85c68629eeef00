"""Synthetic brain MRI with known anomalies: the default dataset, built offline.

Healthy brains are random smooth deformations of the MNI152 tissue maps that ship inside
nilearn's wheel, rendered with a per-modality tissue contrast, a fine healthy texture, a bias
field and Rician noise, then skull-stripped. Anomalous subjects get one anomaly kind each. Some
kinds are not brighter than the tissue around them (darker, same mean but other texture, or
only displaced), which is what structural feature-autoencoders are meant to catch and what a
plain intensity threshold misses.
"""

from __future__ import annotations

import csv
import math
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from fae.errors import FaeInputError
from fae.io import atomic_path, save_nifti

ANOMALY_KINDS: tuple[str, ...] = ("hyperintense", "hypointense", "texture", "sink", "source")
KIND_CODES: dict[str, int] = {kind: code for code, kind in enumerate(ANOMALY_KINDS, start=1)}
MODALITIES: tuple[str, ...] = ("t1", "t2", "flair")
RESOLUTIONS_MM: tuple[int, ...] = (1, 2)

# Mean intensity of grey matter, white matter and CSF per modality.
_CONTRAST: dict[str, tuple[float, float, float]] = {
    "t1": (0.50, 0.72, 0.15),
    "t2": (0.55, 0.38, 0.90),
    "flair": (0.56, 0.44, 0.08),
}
_CONTRAST_JITTER = 0.03
_TEXTURE_AMPLITUDE = 0.025  # healthy fine-scale texture, before noise
_TEXTURE_SIGMA_MM = 1.0
_POSE_DEGREES = 4.0
_POSE_SCALE = 0.05
_ELASTIC_MM = (2.0, 4.0)
_ELASTIC_BASIS = 5
_CROP_MARGIN_MM = 16.0  # room for the pose and elastic deformation around the brain
_BIAS_STRENGTH = (0.10, 0.20)
_BIAS_BASIS = 3
_NOISE_SIGMA = (0.015, 0.03)

_BLOB_RADIUS_MM = (6.0, 15.0)
_BLOB_EDGE_VOXELS = 1.5
_BLOB_ELONGATION = 0.25  # semi-axes within radius * (1 +- this)
_BLOB_WOBBLE = 0.1  # relative boundary perturbation, clipped at twice this
_BLOB_REACH = (1 + _BLOB_ELONGATION) / (1 - 2 * _BLOB_WOBBLE)  # farthest extent / radius
_BLOB_SHIFT = (0.25, 0.40)
_TEXTURE_STD = (0.10, 0.15)
_TEXTURE_LOCAL_MEAN_MM = 2.0
_SPHERE_RADIUS_MM = (10.0, 16.0)
_SINK_GAMMA = (0.30, 0.45)  # source uses the reciprocal
_MIN_DISPLACEMENT_VOXELS = 0.5
_MIN_TISSUE = 0.8  # grey plus white matter probability at a lesion centre
_MIN_TISSUE_AROUND = 0.9  # and its mean in a cube of 3/4 of the lesion's extent
_DEPTH_MARGIN_MM = 2.0
_CENTRE_TRIES = 64

_SPLIT_IDS = {"healthy": 0, "anomalous": 1}
_STREAM_ANATOMY = 0
_STREAM_ANOMALY = 1
_STREAM_CONTRAST = 10
_STREAM_ACQUISITION = 20


@dataclass(frozen=True)
class _Template:
    """Tissue maps of the MNI152 template and the region where a deformed brain can lie."""

    gm: np.ndarray
    wm: np.ndarray
    depth_mm: np.ndarray  # distance inside the brain mask, 0 outside
    affine: np.ndarray
    crop: tuple[slice, slice, slice]
    centre: np.ndarray  # centre of the brain, voxel coordinates of the full volume
    spacing_mm: float


@dataclass(frozen=True)
class _Anatomy:
    """One subject's deformed brain, in the template's crop."""

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    mask: np.ndarray
    depth_mm: np.ndarray
    texture: np.ndarray  # healthy fine texture of the tissue, unit scale


@dataclass(frozen=True)
class Lesion:
    """One anomaly: its kind, centre (voxel indices of the full volume) and size in voxels."""

    kind: str
    center: tuple[int, int, int]
    voxels: int


@dataclass(frozen=True)
class SyntheticSubject:
    """A generated subject (full-volume arrays); ``healthy``: its images without the anomaly.

    ``healthy`` is only filled for anomalous subjects generated with ``with_healthy=True``.
    """

    name: str
    images: dict[str, np.ndarray]
    brainmask: np.ndarray
    seg: np.ndarray
    lesions: list[Lesion]
    affine: np.ndarray
    healthy: dict[str, np.ndarray] | None = None


def make_synthetic(
    out: Path,
    n_subjects: int,
    seed: int = 0,
    modalities: Sequence[str] = MODALITIES,
    test_fraction: float = 0.5,
    kinds: Sequence[str] = ANOMALY_KINDS,
    resolution_mm: int = 1,
    progress: bool = True,
    workers: int = 1,
) -> Path:
    """Write a synthetic dataset of healthy (train) and anomalous (test) subjects into ``out``.

    Subject ``i`` of a split depends only on ``(seed, i)`` and its kind, so datasets of different
    sizes share their first subjects, and ``workers`` processes write the same files as one.
    Files are written atomically, the CSVs last.
    """
    out = Path(out)
    _check_arguments(out, n_subjects, seed, modalities, test_fraction, kinds, resolution_mm)
    if workers < 1:
        raise FaeInputError(None, f"workers must be at least 1, got {workers}")
    n_anomalous = _anomalous_count(n_subjects, test_fraction)
    plan = [("healthy", i, None) for i in range(n_subjects - n_anomalous)]
    plan += [("anomalous", i, kinds[i % len(kinds)]) for i in range(n_anomalous)]
    out.mkdir(parents=True, exist_ok=True)
    make = partial(
        _make_and_write, out, seed=seed, modalities=tuple(modalities), resolution_mm=resolution_mm
    )
    bar = partial(tqdm, total=len(plan), desc="synthetic brains", unit="subject")
    if workers == 1:
        written = [make(*step) for step in bar(plan, disable=not progress)]
    else:  # spawn: the parent may hold threads (torch), which fork does not survive safely
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(plan)), mp_context=context) as pool:
            written = list(bar(pool.map(make, *zip(*plan, strict=True)), disable=not progress))
    rows = [row for subject_rows, _ in written for row in subject_rows]
    lesion_rows = [row for _, subject_lesions in written for row in subject_lesions]
    _write_readme(out, seed, n_subjects, modalities, resolution_mm)
    _write_csv(out / "anomalies.csv", lesion_rows, _ANOMALY_COLUMNS)
    _write_csv(out / "datalist.csv", rows, _DATALIST_COLUMNS)
    return out


def _make_and_write(
    out: Path,
    split: str,
    index: int,
    kind: str | None,
    *,
    seed: int,
    modalities: tuple[str, ...],
    resolution_mm: int,
) -> tuple[list[dict[str, str]], list[dict[str, str | int]]]:
    """Synthesise and write one subject; its datalist rows and anomaly rows."""
    subject = synthesize_subject(split, index, kind, seed, modalities, resolution_mm)
    rows = _write_subject(out, subject, modalities, "train" if kind is None else "test")
    return rows, [_lesion_row(subject.name, lesion) for lesion in subject.lesions]


def synthesize_subject(
    split: str,
    index: int,
    kind: str | None,
    seed: int = 0,
    modalities: Sequence[str] = MODALITIES,
    resolution_mm: int = 1,
    with_healthy: bool = False,
) -> SyntheticSubject:
    """Generate subject ``index`` of ``split`` ("healthy" or "anomalous") with one anomaly kind.

    Each modality and each step has its own random stream, so an image does not depend on which
    other modalities are requested, and ``with_healthy`` adds the very same images without the
    anomaly (same anatomy, bias field and noise) to compare lesions against.
    """
    template = _load_template(resolution_mm)
    anatomy = _deform_anatomy(template, _rng(seed, split, index, _STREAM_ANATOMY))
    clean = {
        m: _render(anatomy, m, _rng(seed, split, index, _STREAM_CONTRAST + MODALITIES.index(m)))
        for m in modalities
    }
    seg = np.zeros(anatomy.mask.shape, np.uint8)
    lesions: list[Lesion] = []
    anomalous = clean
    if kind is not None:
        rng = _rng(seed, split, index, _STREAM_ANOMALY)
        anomalous, lesions = _add_anomalies(clean, anatomy, seg, kind, rng, template)

    def acquire(images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            m: _embed(
                _acquire(
                    images[m],
                    anatomy.mask,
                    _rng(seed, split, index, _STREAM_ACQUISITION + MODALITIES.index(m)),
                ),
                template,
            )
            for m in modalities
        }

    return SyntheticSubject(
        name=f"{split}_{index:03d}",
        images=acquire(anomalous),
        brainmask=_embed(anatomy.mask.astype(np.uint8), template),
        seg=_embed(seg, template),
        lesions=lesions,
        affine=template.affine,
        healthy=acquire(clean) if with_healthy and kind is not None else None,
    )


# --- arguments and layout ---------------------------------------------------------------------

_DATALIST_COLUMNS = ("subject", "modality", "image", "seg", "brainmask", "split")
_ANOMALY_COLUMNS = ("subject", "kind", "code", "voxels", "center_x", "center_y", "center_z")


def _check_arguments(
    out: Path,
    n_subjects: int,
    seed: int,
    modalities: Sequence[str],
    test_fraction: float,
    kinds: Sequence[str],
    resolution_mm: int,
) -> None:
    """Refuse settings that cannot produce a dataset, before anything is written."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FaeInputError(out, "already exists and is not empty")
    problems = {
        f"n_subjects must be at least 1, got {n_subjects}": n_subjects < 1,
        f"seed must be a non-negative integer, got {seed}": seed < 0,
        f"modalities must be distinct names among {MODALITIES}, got {tuple(modalities)}": (
            not modalities
            or len(set(modalities)) != len(modalities)
            or not set(modalities) <= set(MODALITIES)
        ),
        f"test_fraction must be in [0, 1], got {test_fraction}": not 0 <= test_fraction <= 1,
        f"kinds must be names among {ANOMALY_KINDS}, got {tuple(kinds)}": (
            not kinds or not set(kinds) <= set(ANOMALY_KINDS)
        ),
        f"resolution_mm must be one of {RESOLUTIONS_MM}, got {resolution_mm}": (
            resolution_mm not in RESOLUTIONS_MM
        ),
    }
    for problem, failed in problems.items():
        if failed:
            raise FaeInputError(None, problem)


def _anomalous_count(n_subjects: int, test_fraction: float) -> int:
    """Round half up, keeping at least one subject in each split when there are two or more."""
    count = math.floor(n_subjects * test_fraction + 0.5)
    return min(max(count, 1), n_subjects - 1) if n_subjects >= 2 else count


def _write_subject(
    out: Path, subject: SyntheticSubject, modalities: Sequence[str], split: str
) -> list[dict[str, str]]:
    """Write one subject's volumes and return its datalist rows, one per modality."""
    for modality in modalities:
        save_nifti(
            subject.images[modality], subject.affine, out / f"{subject.name}_{modality}.nii.gz"
        )
    save_nifti(subject.brainmask, subject.affine, out / f"{subject.name}_brainmask.nii.gz")
    save_nifti(subject.seg, subject.affine, out / f"{subject.name}_seg.nii.gz")
    return [
        {
            "subject": subject.name,
            "modality": modality,
            "image": f"{subject.name}_{modality}.nii.gz",
            "seg": f"{subject.name}_seg.nii.gz",
            "brainmask": f"{subject.name}_brainmask.nii.gz",
            "split": split,
        }
        for modality in modalities
    ]


def _lesion_row(subject: str, lesion: Lesion) -> dict[str, str | int]:
    x, y, z = lesion.center
    return {
        "subject": subject,
        "kind": lesion.kind,
        "code": KIND_CODES[lesion.kind],
        "voxels": lesion.voxels,
        "center_x": x,
        "center_y": y,
        "center_z": z,
    }


def _write_csv(path: Path, rows: Sequence[dict[str, str | int]], columns: Sequence[str]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _write_readme(
    out: Path, seed: int, n_subjects: int, modalities: Sequence[str], resolution_mm: int
) -> None:
    codes = "\n".join(f"  {code}: {kind}" for kind, code in KIND_CODES.items())
    text = (
        "Synthetic brain MRI for unsupervised anomaly localisation (generated by fae).\n\n"
        f"Random deformations of the MNI152 template ({resolution_mm} mm), skull-stripped, with\n"
        f"modalities {', '.join(modalities)}; seed {seed}, {n_subjects} subjects.\n"
        "healthy_* subjects (split train) have no anomaly; anomalous_* subjects (split test)\n"
        "have one anomaly kind each, in one or two lesions.\n\n"
        "Files: <subject>_<modality>.nii.gz (float32, roughly 0..1, 0 outside the brain),\n"
        "<subject>_brainmask.nii.gz (uint8 0/1), <subject>_seg.nii.gz (uint8, 0 = normal,\n"
        "otherwise the kind code of the anomaly). datalist.csv lists each subject's images (one\n"
        "row per modality) with its split; anomalies.csv lists the lesions with their centres\n"
        "in voxel indices.\n\n"
        f"Kind codes:\n{codes}\n"
    )
    with atomic_path(out / "README.txt") as tmp:
        tmp.write_text(text)


# --- healthy brains ---------------------------------------------------------------------------


def _rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
    """An independent random stream per (seed, subject, step) so outputs do not depend on order."""
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_IDS[split], index, stream]))


@lru_cache(maxsize=2)
def _load_template(resolution_mm: int) -> _Template:
    """Load the MNI152 grey/white-matter maps and brain mask bundled with nilearn (offline)."""
    from nilearn import datasets  # slow import, only needed here

    mask_img = datasets.load_mni152_brain_mask(resolution=resolution_mm)
    mask = np.ascontiguousarray(np.asarray(mask_img.dataobj) > 0)
    gm = datasets.load_mni152_gm_template(resolution=resolution_mm).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=resolution_mm).get_fdata(dtype=np.float32)
    spacing = float(resolution_mm)
    low, high = _bounding_box(mask)
    margin = math.ceil(_CROP_MARGIN_MM / spacing)
    crop = tuple(
        slice(max(lo - margin, 0), min(hi + margin, size))
        for lo, hi, size in zip(low, high, mask.shape, strict=True)
    )
    return _Template(  # C order: map_coordinates is twice as fast on it
        gm=np.ascontiguousarray(np.clip(gm, 0, 1)),
        wm=np.ascontiguousarray(np.clip(wm, 0, 1)),
        depth_mm=_depth_mm(mask, low, high, spacing),
        affine=mask_img.affine.copy(),
        crop=crop,
        centre=(low + high - 1) / 2.0,
        spacing_mm=spacing,
    )


def _bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowest index and one past the highest index of the non-zero voxels, per axis."""
    where = np.argwhere(mask)
    return where.min(axis=0), where.max(axis=0) + 1


def _depth_mm(mask: np.ndarray, low: np.ndarray, high: np.ndarray, spacing: float) -> np.ndarray:
    """Distance to the outside of the mask in mm; 0 outside. Computed on the box only (speed)."""
    box = tuple(
        slice(max(lo - 1, 0), hi + 1) for lo, hi in zip(low, high, strict=True)
    )  # one voxel of background around the brain
    depth = np.zeros(mask.shape, np.float32)
    depth[box] = ndimage.distance_transform_edt(mask[box]) * spacing
    return depth


def _deform_anatomy(template: _Template, rng: np.random.Generator) -> _Anatomy:
    """Warp the template's tissue maps with a random pose and a smooth elastic field."""
    coords = _warp_coordinates(template, rng)
    depth = ndimage.map_coordinates(template.depth_mm, coords, order=1, mode="nearest")
    mask = depth > 0.5 * template.spacing_mm  # the 0.5 level of the interpolated binary mask
    inside = coords[:, mask]  # tissue maps are only needed in the brain: a third of the crop
    gm, wm = (np.zeros(mask.shape, np.float32) for _ in range(2))
    gm[mask] = np.clip(ndimage.map_coordinates(template.gm, inside, order=1, mode="nearest"), 0, 1)
    wm[mask] = np.clip(ndimage.map_coordinates(template.wm, inside, order=1, mode="nearest"), 0, 1)
    csf = np.where(mask, np.clip(1 - gm - wm, 0, 1), 0).astype(np.float32)
    texture = _healthy_texture(mask.shape, rng, template) * (gm + wm)  # fluid has none
    return _Anatomy(gm, wm, csf, mask, depth, texture)


def _warp_coordinates(template: _Template, rng: np.random.Generator) -> np.ndarray:
    """Source coordinates (3, *crop shape) in the full template for each output crop voxel."""
    shape = tuple(s.stop - s.start for s in template.crop)
    matrix = Rotation.from_euler(
        "xyz", rng.uniform(-_POSE_DEGREES, _POSE_DEGREES, 3), degrees=True
    ).as_matrix() @ np.diag(rng.uniform(1 - _POSE_SCALE, 1 + _POSE_SCALE, 3))
    amplitude = rng.uniform(*_ELASTIC_MM) / template.spacing_mm
    coords = _smooth_fields(rng, shape, _ELASTIC_BASIS, 3) * np.float32(amplitude)
    axes = [
        np.arange(s.start, s.stop, dtype=np.float32) - np.float32(c)
        for s, c in zip(template.crop, template.centre, strict=True)
    ]
    for i in range(3):
        coords[i] += np.float32(template.centre[i])
        for j, axis in enumerate(axes):
            view = [1, 1, 1]
            view[j] = -1
            coords[i] += np.float32(matrix[i, j]) * axis.reshape(view)
    return coords


def _smooth_fields(
    rng: np.random.Generator, shape: tuple[int, ...], n_basis: int, n_fields: int
) -> np.ndarray:
    """Random low-frequency fields (n_fields, *shape), each scaled to a maximum of |1|.

    A separable cosine basis keeps this to a few milliseconds, unlike smoothing a full volume.
    """
    k = np.arange(n_basis)
    weights = 1.0 / (1.0 + k[:, None, None] + k[None, :, None] + k[None, None, :]) ** 1.5
    weights[0, 0, 0] = 0.0  # no constant term: the pose handles translation and bias scale
    coefficients = (rng.standard_normal((n_fields, n_basis, n_basis, n_basis)) * weights).astype(
        np.float32
    )
    bases = [
        np.cos(np.pi * np.outer((np.arange(n) + 0.5) / n, k)).astype(np.float32) for n in shape
    ]
    partial = np.einsum("fabc,xa,yb->fxyc", coefficients, bases[0], bases[1])
    fields = (partial.reshape(-1, n_basis) @ bases[2].T).reshape(n_fields, *shape)
    fields /= np.abs(fields).reshape(n_fields, -1).max(axis=1).reshape(-1, 1, 1, 1)
    return fields


def _healthy_texture(
    shape: tuple[int, ...], rng: np.random.Generator, template: _Template
) -> np.ndarray:
    """Fine-scale smoothed noise with unit standard deviation: the tissue's own texture."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    texture = ndimage.gaussian_filter(noise, _TEXTURE_SIGMA_MM / template.spacing_mm)
    return texture / texture.std()


def _render(anatomy: _Anatomy, modality: str, rng: np.random.Generator) -> np.ndarray:
    """Noise-free image of one modality: tissue mixture with jittered contrast plus texture.

    Tissue maps are zero outside the brain, so the image is too.
    """
    intensities = np.asarray(_CONTRAST[modality]) + rng.uniform(
        -_CONTRAST_JITTER, _CONTRAST_JITTER, 3
    )
    image = _TEXTURE_AMPLITUDE * anatomy.texture
    for tissue, intensity in zip((anatomy.gm, anatomy.wm, anatomy.csf), intensities, strict=True):
        image += np.float32(intensity) * tissue
    return image


def _acquire(clean: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply a smooth multiplicative bias field and Rician noise inside the brain mask."""
    strength = np.float32(rng.uniform(*_BIAS_STRENGTH))
    bias = np.exp(strength * _smooth_fields(rng, clean.shape, _BIAS_BASIS, 1)[0][mask])
    sigma = np.float32(rng.uniform(*_NOISE_SIGMA))
    signal = clean[mask] * bias
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    image = np.zeros(clean.shape, np.float32)
    image[mask] = np.hypot(real, imaginary)
    return image


def _embed(cropped: np.ndarray, template: _Template) -> np.ndarray:
    """Place a crop-sized array into a zero volume of the template's full shape."""
    full = np.zeros(template.gm.shape, cropped.dtype)
    full[template.crop] = cropped
    return full


# --- anomalies --------------------------------------------------------------------------------

# Changes images in place inside a box around a centre; returns the lesion's voxels in the box.
# Arguments: images, centre, radius (voxels), box, rng, voxel spacing (mm).
_Anomaly = Callable[
    [dict[str, np.ndarray], np.ndarray, float, tuple[slice, ...], np.random.Generator, float],
    np.ndarray,
]


def _add_anomalies(
    clean: dict[str, np.ndarray],
    anatomy: _Anatomy,
    seg: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    template: _Template,
) -> tuple[dict[str, np.ndarray], list[Lesion]]:
    """Return copies of the images with 1 or 2 lesions of ``kind``; mark them in ``seg``."""
    images = {m: image.copy() for m, image in clean.items()}
    spacing = template.spacing_mm
    offset = np.array([s.start for s in template.crop])
    placed: list[tuple[np.ndarray, float]] = []
    lesions: list[Lesion] = []
    spherical = kind in ("sink", "source")
    for _ in range(rng.integers(1, 3)):
        radius = rng.uniform(*(_SPHERE_RADIUS_MM if spherical else _BLOB_RADIUS_MM)) / spacing
        reach = radius if spherical else _BLOB_REACH * radius
        centre = _pick_centre(anatomy, rng, reach * spacing + _DEPTH_MARGIN_MM, placed, reach)
        if centre is None:
            break
        box = _box(centre, math.ceil(reach) + 3, anatomy.mask.shape)
        region = _APPLY[kind](images, centre, radius, box, rng, spacing) & anatomy.mask[box]
        seg[box][region] = KIND_CODES[kind]
        placed.append((centre, reach))
        lesions.append(Lesion(kind, tuple(int(c) for c in centre + offset), int(region.sum())))
    return images, lesions


def _pick_centre(
    anatomy: _Anatomy,
    rng: np.random.Generator,
    min_depth_mm: float,
    placed: Sequence[tuple[np.ndarray, float]],
    reach: float,
) -> np.ndarray | None:
    """A random voxel deep in grey/white matter, not overlapping earlier lesions.

    The tissue around the centre is checked too, to keep lesions out of the ventricles; if no
    tried voxel passes, the one with the most tissue around it is taken.
    """
    tissue = anatomy.gm + anatomy.wm
    allowed = np.flatnonzero((anatomy.depth_mm >= min_depth_mm) & (tissue >= _MIN_TISSUE))
    if allowed.size == 0:
        return None
    tries = np.stack(np.unravel_index(rng.choice(allowed, _CENTRE_TRIES), tissue.shape), 1)
    best, best_tissue = None, -1.0
    for candidate in tries:
        if any(np.linalg.norm(candidate - c) <= reach + r + 2 for c, r in placed):
            continue
        around = tissue[_box(candidate, math.ceil(0.75 * reach), tissue.shape)].mean()
        if around >= _MIN_TISSUE_AROUND:
            return candidate
        if around > best_tissue:
            best, best_tissue = candidate, around
    return best


def _box(centre: np.ndarray, half: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Slices of a cube of half-width ``half`` around ``centre``, clipped to ``shape``."""
    return tuple(
        slice(max(int(c) - half, 0), min(int(c) + half + 1, n))
        for c, n in zip(centre, shape, strict=True)
    )


def _offsets(centre: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """Voxel offsets (3, *box shape) of each voxel in ``box`` from ``centre``."""
    axes = [
        np.arange(s.start, s.stop, dtype=np.float32) - np.float32(c)
        for s, c in zip(box, centre, strict=True)
    ]
    return np.stack(np.meshgrid(*axes, indexing="ij"))


def _blob_weight(
    centre: np.ndarray, radius: float, box: tuple[slice, ...], rng: np.random.Generator
) -> np.ndarray:
    """Soft mask (0..1) of a randomly oriented ellipsoid with a boundary bent by smooth noise."""
    semi_axes = radius * rng.uniform(1 - _BLOB_ELONGATION, 1 + _BLOB_ELONGATION, 3)
    # A normalised Gaussian quaternion is a uniformly random orientation.
    rotation = Rotation.from_quat(rng.standard_normal(4)).as_matrix().astype(np.float32)
    local = np.tensordot(rotation.T, _offsets(centre, box), axes=1)
    rho = np.sqrt(np.sum((local / semi_axes.reshape(3, 1, 1, 1)) ** 2, axis=0))
    wobble = ndimage.gaussian_filter(rng.standard_normal(rho.shape), max(radius / 3, 1.0))
    rho *= 1 + _BLOB_WOBBLE * np.clip(wobble / wobble.std(), -2, 2)
    inside_voxels = (1 - rho) * semi_axes.mean()  # approximate distance to the boundary
    return np.clip(0.5 + inside_voxels / _BLOB_EDGE_VOXELS, 0, 1).astype(np.float32)


def _intensity_shift(sign: float) -> _Anomaly:
    def apply(
        images: dict[str, np.ndarray],
        centre: np.ndarray,
        radius: float,
        box: tuple[slice, ...],
        rng: np.random.Generator,
        spacing: float,
    ) -> np.ndarray:
        """Raise or lower the intensity of a blob equally in every modality."""
        weight = _blob_weight(centre, radius, box, rng)
        shift = np.float32(sign * rng.uniform(*_BLOB_SHIFT))
        for image in images.values():
            image[box] += shift * weight
        return weight > 0.5

    return apply


def _retexture(
    images: dict[str, np.ndarray],
    centre: np.ndarray,
    radius: float,
    box: tuple[slice, ...],
    rng: np.random.Generator,
    spacing: float,
) -> np.ndarray:
    """Replace a blob's content by its local mean plus a strong fine pattern, keeping its mean.

    The mean inside the lesion is restored exactly, so only the texture is anomalous.
    """
    weight = _blob_weight(centre, radius, box, rng)
    region = weight > 0.5
    pattern = ndimage.gaussian_filter(rng.standard_normal(weight.shape), 0.6).astype(np.float32)
    pattern *= rng.uniform(*_TEXTURE_STD) / pattern[region].std()
    for image in images.values():
        old = image[box]
        local_mean = ndimage.gaussian_filter(old, _TEXTURE_LOCAL_MEAN_MM / spacing)
        new = (1 - weight) * old + weight * (local_mean + pattern)
        change = (new - old)[region].mean()
        image[box] = new - change * weight / weight[region].mean()
    return region


def _radial_warp(gamma_range: tuple[float, float], outward: bool) -> _Anomaly:
    def apply(
        images: dict[str, np.ndarray],
        centre: np.ndarray,
        radius: float,
        box: tuple[slice, ...],
        rng: np.random.Generator,
        spacing: float,
    ) -> np.ndarray:
        """Move tissue towards (sink) or away from (source) the centre of a sphere (MOOD).

        The voxel at distance d shows what was at distance R (d/R)**gamma: gamma < 1 pulls
        outer tissue inwards, gamma > 1 pushes central tissue outwards. Intensities only move.
        """
        gamma = rng.uniform(*gamma_range)
        gamma = 1 / gamma if outward else gamma
        offsets = _offsets(centre, box)
        x = np.sqrt(np.sum(offsets**2, axis=0)) / radius
        inside = x < 1
        factor = np.where(inside, np.maximum(x, 1e-6) ** (gamma - 1), 1).astype(np.float32)
        coords = offsets * factor + centre.reshape(3, 1, 1, 1).astype(np.float32)
        for image in images.values():
            image[box] = ndimage.map_coordinates(image, coords, order=1, mode="nearest")
        displacement = np.where(inside, radius * np.abs(x**gamma - x), 0)
        return ndimage.binary_fill_holes(displacement > _MIN_DISPLACEMENT_VOXELS)

    return apply


_APPLY: dict[str, _Anomaly] = {
    "hyperintense": _intensity_shift(+1.0),
    "hypointense": _intensity_shift(-1.0),
    "texture": _retexture,
    "sink": _radial_warp(_SINK_GAMMA, outward=False),
    "source": _radial_warp(_SINK_GAMMA, outward=True),
}
