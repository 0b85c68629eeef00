import gzip

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from fae.data.volume import SliceStackSource, load_nifti
from fae.errors import FaeInputError

from conftest import head, write_nifti


def test_load_keeps_affine_and_header(tmp_path):
    affine = np.diag([-1.0, -1.2, 2.0, 1.0])
    affine[:3, 3] = [10, 20, -5]
    path = write_nifti(tmp_path / "a.nii.gz", head()[0], affine)
    vol = load_nifti(path)
    assert vol.data.dtype == np.float32 and vol.data.shape == (40, 48, 12)
    np.testing.assert_allclose(vol.affine, affine)
    assert vol.spacing == pytest.approx((1.0, 1.2, 2.0))
    assert vol.orientation == "LPS"
    assert isinstance(vol.header, nib.Nifti1Header)


def test_trailing_singleton_dimension_is_dropped(tmp_path):
    path = write_nifti(tmp_path / "a.nii.gz", np.ones((4, 5, 6, 1), np.float32))
    assert load_nifti(path).data.shape == (4, 5, 6)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.ones((4, 5), np.float32), "expected a 3D image"),
        (np.ones((4, 5, 6, 2), np.float32), "expected a 3D image"),
        (np.full((4, 5, 6), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_arrays_are_named(tmp_path, data, message):
    path = write_nifti(tmp_path / "bad.nii.gz", data)
    with pytest.raises(FaeInputError, match=message) as err:
        load_nifti(path)
    assert str(path) in str(err.value)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FaeInputError, match="file not found"):
        load_nifti(tmp_path / "nope.nii.gz")
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(gzip.compress(b"not a nifti at all" * 10))
    with pytest.raises(FaeInputError, match="cannot read NIfTI"):
        load_nifti(corrupt)
    truncated = tmp_path / "truncated.nii.gz"
    good = write_nifti(tmp_path / "good.nii.gz", head()[0]).read_bytes()
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(FaeInputError, match="cannot read NIfTI"):
        load_nifti(truncated)


def test_slice_stack_reads_channel_in_order(tmp_path):
    rng = np.random.default_rng(0)
    slices = rng.integers(0, 255, (3, 8, 10, 3), dtype=np.uint8)
    paths = []
    for i, s in enumerate(slices, start=1):
        p = tmp_path / f"case_{i}.tif"
        Image.fromarray(s).save(p)
        paths.append(p)
    vol = SliceStackSource(tuple(paths), channel=1).load()
    assert vol.data.shape == (8, 10, 3)
    np.testing.assert_array_equal(vol.data[:, :, 2], slices[2, :, :, 1])
    with pytest.raises(FaeInputError, match="channels: choose one"):
        SliceStackSource(tuple(paths), channel=None).load()
    with pytest.raises(FaeInputError, match="out of range"):
        SliceStackSource(tuple(paths), channel=5).load()


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_header_claiming_a_huge_volume_is_refused_before_reading(tmp_path, suffix):
    path = write_nifti(tmp_path / f"huge{suffix}", np.zeros((4, 4, 4), np.float32))
    raw = path.read_bytes()
    raw = bytearray(gzip.decompress(raw) if suffix == ".nii.gz" else raw)
    raw[42:48] = np.array([30000] * 3, np.int16).tobytes()  # dim[1..3]: what a damaged header says
    path.write_bytes(gzip.compress(bytes(raw)) if suffix == ".nii.gz" else bytes(raw))
    with pytest.raises(FaeInputError, match=r"30000 x 30000 x 30000 = 27,000,000,000,000 voxels"):
        load_nifti(path)


def test_uncompressed_data_shorter_than_its_header_claims(tmp_path):
    path = write_nifti(tmp_path / "short.nii", np.ones((8, 8, 8), np.float32))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(FaeInputError, match="bytes of image data, the file holds"):
        load_nifti(path)


def test_complex_data_is_refused(tmp_path):
    path = tmp_path / "complex.nii.gz"
    nib.Nifti1Image(np.ones((4, 4, 4), np.complex64), np.eye(4)).to_filename(path)
    with pytest.raises(FaeInputError, match=r"complex-valued data \(complex64\)"):
        load_nifti(path)
