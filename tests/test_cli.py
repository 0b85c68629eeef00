"""The command line: real subprocesses, as a user runs them."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from conftest import fae, head, write_nifti


def test_inspect_reports_subjects_and_masks(flat_dataset):
    r = fae("data", "inspect", flat_dataset)
    assert r.returncode == 0, r.stderr
    assert "layout:        flat" in r.stdout
    assert "subjects:      4" in r.stdout
    assert "modalities:    flair, t1" in r.stdout
    assert "brain masks:   2 of 4 subjects given" in r.stdout
    assert "auto takes given for 4, hd-bet for 2, nonzero for 2 scans" in r.stdout
    assert r.stdout.count("sub0") == 8  # one row per scan


def test_prepare_then_cached(flat_dataset, tmp_path):
    args = (
        "data",
        "prepare",
        flat_dataset,
        "--modality",
        "flair",
        "--size",
        "16",
        "--cache-dir",
        tmp_path / "c",
    )
    r = fae(*args)
    assert r.returncode == 0, r.stderr
    assert "4 subjects" in r.stdout and "with lesion" in r.stdout
    assert "brain masks: given 2, nonzero 2" in r.stdout
    assert len(list((tmp_path / "c").rglob("*.npz"))) == 4


def huge_header(path):
    """A NIfTI file whose header claims 30000 x 30000 x 30000 voxels (it holds 5 x 5 x 5)."""
    write_nifti(path, np.ones((5, 5, 5), np.float32))
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[42:48] = np.array([30000] * 3, np.int16).tobytes()  # dim[1..3]
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d, "no images found"),
        (
            lambda d: write_nifti(d / "a_flair.nii.gz", np.ones((5, 5), np.float32)) and d,
            "expected a 3D image",
        ),
        (
            lambda d: write_nifti(d / "a_flair.nii.gz", np.ones((5, 5, 5, 3), np.float32)) and d,
            "expected a 3D image",
        ),
        (
            lambda d: (
                write_nifti(d / "a_flair.nii.gz", np.full((5, 5, 5), np.nan, np.float32)) and d
            ),
            "NaN",
        ),
        (
            lambda d: (
                write_nifti(d / "a_flair.nii.gz", head()[0]),
                write_nifti(d / "a_seg.nii.gz", head()[1][:-2]),
                d,
            )[-1],
            "segmentation shape",
        ),
        (
            lambda d: (d / "a_flair.nii.gz").write_bytes(b"\x1f\x8b garbage") and d,
            "cannot read NIfTI",
        ),
        (lambda d: huge_header(d / "a_flair.nii.gz") and d, "voxels, more than fae reads"),
        (
            lambda d: (
                nib.save(
                    nib.Nifti1Image(np.ones((5, 5, 5), np.complex64), np.eye(4)),
                    d / "a_flair.nii.gz",
                ),  # fmt: skip
                d,
            )[-1],
            "complex-valued data",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, make, message):
    folder = tmp_path / "data"
    folder.mkdir()
    r = fae("data", "inspect", make(folder))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [
        line for line in r.stderr.strip().splitlines() if "%|" not in line
    ]  # not progress bars
    assert len(lines) == 1 and lines[0].startswith("fae: error: ") and message in lines[0]


def test_prepare_with_unknown_modality(flat_dataset):
    r = fae("data", "prepare", flat_dataset, "--modality", "dwi")
    assert r.returncode == 2 and "no 'dwi' images (found: flair, t1)" in r.stderr


def test_make_synthetic_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    r = fae("make-synthetic", tmp_path, "--subjects", "2")
    assert r.returncode == 2 and "not empty" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
