"""The synthetic dataset: layout, determinism, and anomalies that are what they claim to be."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from fae.data.discover import discover
from fae.data.synthetic import (
    ANOMALY_KINDS,
    KIND_CODES,
    SyntheticSubject,
    make_synthetic,
    synthesize_subject,
)
from fae.errors import FaeInputError
from fae.viz import save_montage

# 2 mm keeps the tests fast; the generator is the same at 1 mm.
SETTINGS = {"modalities": ("t1", "flair"), "resolution_mm": 2}


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "six"
    return make_synthetic(out, n_subjects=6, seed=0, progress=False, **SETTINGS)


@pytest.fixture(scope="module")
def subjects() -> dict[str, SyntheticSubject]:
    """One anomalous subject per kind, with its anomaly-free version."""
    return {
        kind: synthesize_subject("anomalous", i, kind, with_healthy=True, **SETTINGS)
        for i, kind in enumerate(ANOMALY_KINDS)
    }


def test_layout_and_tables(dataset: Path) -> None:
    columns, rows = _read_csv(dataset / "datalist.csv")
    assert columns == ["subject", "modality", "image", "seg", "brainmask", "split"]
    subjects = ["healthy_000", "healthy_001", "healthy_002"]
    subjects += ["anomalous_000", "anomalous_001", "anomalous_002"]
    modalities = SETTINGS["modalities"]
    assert [r["subject"] for r in rows] == [s for s in subjects for _ in modalities]
    assert [r["modality"] for r in rows] == list(modalities) * len(subjects)
    assert [r["split"] for r in rows] == ["train"] * 3 * len(modalities) + ["test"] * 3 * len(
        modalities
    )
    ds = discover(dataset / "datalist.csv")
    assert [s.id for s in ds.subjects] == subjects and ds.modalities == sorted(modalities)
    for row in rows:
        assert row["image"] == f"{row['subject']}_{row['modality']}.nii.gz"
        for column in ("image", "seg", "brainmask"):
            assert (dataset / row[column]).is_file()
        image = nib.load(dataset / f"{row['subject']}_flair.nii.gz")
        assert image.get_data_dtype() == np.float32
        assert nib.load(dataset / row["seg"]).get_data_dtype() == np.uint8
        assert nib.load(dataset / row["brainmask"]).get_data_dtype() == np.uint8
    columns, lesions = _read_csv(dataset / "anomalies.csv")
    assert columns == ["subject", "kind", "code", "voxels", "center_x", "center_y", "center_z"]
    kinds = {r["subject"]: r["kind"] for r in lesions}
    assert kinds == {
        "anomalous_000": "hyperintense",
        "anomalous_001": "hypointense",
        "anomalous_002": "texture",
    }
    assert all(int(r["code"]) == KIND_CODES[r["kind"]] for r in lesions)
    readme = (dataset / "README.txt").read_text()
    assert "seed 0" in readme and "5: source" in readme
    assert not list(dataset.glob(".*")), "no temporary files left behind"


def test_segmentations_match_anomalies(dataset: Path) -> None:
    _, lesions = _read_csv(dataset / "anomalies.csv")
    for name in ("healthy_000", "healthy_001", "healthy_002"):
        assert not _load(dataset / f"{name}_seg.nii.gz").any()
    for name in ("anomalous_000", "anomalous_001", "anomalous_002"):
        seg = _load(dataset / f"{name}_seg.nii.gz")
        mask = _load(dataset / f"{name}_brainmask.nii.gz")
        image = _load(dataset / f"{name}_t1.nii.gz")
        rows = [r for r in lesions if r["subject"] == name]
        assert 1 <= len(rows) <= 2
        assert set(np.unique(seg)) == {0, int(rows[0]["code"])}
        assert np.all(mask[seg > 0] == 1), "lesions lie inside the brain"
        assert not image[mask == 0].any(), "skull-stripped: zero outside the brain"
        assert (seg > 0).sum() == sum(int(r["voxels"]) for r in rows)
        for row in rows:
            centre = tuple(int(row[f"center_{axis}"]) for axis in "xyz")
            assert seg[centre] > 0


def test_deterministic_and_independent_of_size(dataset: Path, tmp_path: Path) -> None:
    smaller = make_synthetic(tmp_path / "four", n_subjects=4, seed=0, progress=False, **SETTINGS)
    for name in ("healthy_000", "healthy_001", "anomalous_000", "anomalous_001"):
        for suffix in ("t1", "flair", "seg", "brainmask"):
            file = f"{name}_{suffix}.nii.gz"
            np.testing.assert_array_equal(_load(smaller / file), _load(dataset / file))
    # An image does not depend on which other modalities were asked for.
    alone = synthesize_subject("healthy", 0, None, modalities=("t1",), resolution_mm=2)
    np.testing.assert_array_equal(alone.images["t1"], _load(dataset / "healthy_000_t1.nii.gz"))
    other_seed = synthesize_subject("healthy", 0, None, seed=1, modalities=("t1",), resolution_mm=2)
    assert not np.array_equal(other_seed.images["t1"], alone.images["t1"])


def test_workers_write_the_same_dataset(dataset: Path, tmp_path: Path) -> None:
    parallel = make_synthetic(tmp_path / "six", 6, seed=0, progress=False, workers=2, **SETTINGS)
    for name in ("datalist.csv", "anomalies.csv"):
        assert (parallel / name).read_text() == (dataset / name).read_text()
    for file in sorted(dataset.glob("*.nii.gz")):
        np.testing.assert_array_equal(_load(parallel / file.name), _load(file))


def test_existing_output_is_refused(tmp_path: Path) -> None:
    (tmp_path / "taken.txt").write_text("mine")
    with pytest.raises(FaeInputError, match="already exists and is not empty"):
        make_synthetic(tmp_path, n_subjects=2, progress=False, **SETTINGS)
    with pytest.raises(FaeInputError, match="kinds"):
        make_synthetic(tmp_path / "new", n_subjects=2, kinds=("stripes",), progress=False)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(("kind", "sign"), [("hyperintense", 1), ("hypointense", -1)])
def test_intensity_lesions(subjects: dict[str, SyntheticSubject], kind: str, sign: int) -> None:
    subject = subjects[kind]
    lesion = subject.seg > 0
    assert lesion.any() and np.all(subject.seg[lesion] == KIND_CODES[kind])
    for modality, image in subject.images.items():
        change = image[lesion].mean() - subject.healthy[modality][lesion].mean()
        assert sign * change > 0.15, (modality, change)


def test_texture_lesion_keeps_mean(subjects: dict[str, SyntheticSubject]) -> None:
    subject = subjects["texture"]
    lesion = subject.seg > 0
    assert lesion.any()
    for modality, image in subject.images.items():
        healthy = subject.healthy[modality]
        assert abs(image[lesion].mean() - healthy[lesion].mean()) < 0.02
        assert image[lesion].std() != pytest.approx(healthy[lesion].std(), abs=0.005)

        def fine(volume: np.ndarray) -> float:
            return float((volume - ndimage.gaussian_filter(volume, 1.0))[lesion].std())

        assert fine(image) > 1.5 * fine(healthy), modality


@pytest.mark.parametrize("kind", ["sink", "source"])
def test_deformation_lesions_only_move_tissue(
    subjects: dict[str, SyntheticSubject], kind: str
) -> None:
    subject = subjects[kind]
    lesion = subject.seg > 0
    assert lesion.any()
    near = ndimage.binary_dilation(lesion, ndimage.generate_binary_structure(3, 3), iterations=2)
    for modality, image in subject.images.items():
        healthy = subject.healthy[modality]
        np.testing.assert_array_equal(image[~near], healthy[~near])
        assert np.abs(image - healthy)[lesion].mean() > 0.01, "the tissue moved"
        inside, before = image[lesion], healthy[near]
        assert abs(inside.mean() - healthy[lesion].mean()) < 0.05
        low, high = np.percentile(inside, [1, 99])
        assert before.min() - 0.05 < low and high < before.max() + 0.05, "no new intensities"


def test_montage_png(dataset: Path, tmp_path: Path) -> None:
    names = ["healthy_000", "anomalous_000", "anomalous_001", "anomalous_002"]
    volumes = [_load(dataset / f"{name}_flair.nii.gz") for name in names]
    segs = [_load(dataset / f"{name}_seg.nii.gz") for name in names]
    path = save_montage(volumes, tmp_path / "montage.png", titles=names, n_slices=5, overlays=segs)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*"))
