"""Checks on the real data in ../shared/data; each test skips when that folder is absent."""

import numpy as np
import pytest

from fae.data.discover import discover
from fae.data.inspect import inspect_dataset

from conftest import shared_data

pytestmark = pytest.mark.realdata


def test_lgg_flair_80_patients():
    ds = discover(shared_data("lgg-flair"))
    rows = inspect_dataset(ds, progress=False)
    assert (ds.layout, len(ds.subjects), ds.modalities) == ("flat", 80, ["flair"])
    assert all(s.seg is not None and s.brainmask is None for s in ds.subjects)
    assert all(r.shape[:2] == (256, 256) and r.vmax <= 255 for r in rows)
    assert sum(r.lesion_voxels > 0 for r in rows) == 80


def test_lgg_t1_77_patients():
    ds = discover(shared_data("lgg-t1"))
    assert (ds.layout, len(ds.subjects), ds.modalities) == ("flat", 77, ["t1"])


def test_brats2013_four_cases_with_masks():
    ds = discover(shared_data("brats2013-flair"))
    rows = inspect_dataset(ds, progress=False)
    assert (ds.layout, len(ds.subjects), ds.modalities) == ("subject-folders", 4, ["flair"])
    assert all(r.shape == (240, 240, 155) and r.seg and r.brainmask for r in rows)
    assert all(r.orientation == "LPS" and r.vmin < 0 for r in rows)


def test_tiff_sample_matches_the_nifti_volumes():
    ds = discover(shared_data("lgg-tiff-sample"), channel_names=["t1", "flair", "t1ce"])
    assert (ds.layout, len(ds.subjects), ds.modalities) == (
        "slice-folders",
        2,
        ["flair", "t1", "t1ce"],
    )
    flair_ds = discover(shared_data("lgg-flair"))
    for subject in ds.subjects:
        tiff = subject.images["flair"].load().data
        nifti = flair_ds.subject(subject.id).images["flair"].load().data
        np.testing.assert_array_equal(tiff, nifti)
        seg_tiff = subject.seg.load().data > 0
        seg_nifti = flair_ds.subject(subject.id).seg.load().data > 0
        np.testing.assert_array_equal(seg_tiff, seg_nifti)


def test_ms_volume_modalities():
    ds = discover(shared_data("ms-lesjak"))
    (subject,) = ds.subjects
    assert sorted(subject.images) == ["flair", "t2"] and subject.seg is not None
