import numpy as np
import pytest

import fae.data.slices as slices_module
from fae.data.discover import discover
from fae.data.preprocess import PrepConfig
from fae.data.slices import prepare_dataset, split_subjects


def test_prepare_dataset_stacks_subjects(flat_dataset):
    ds = discover(flat_dataset)
    s = prepare_dataset(ds, "flair", PrepConfig(size=16), progress=False)
    assert s.subject_ids == ("sub00", "sub01", "sub02", "sub03")
    assert s.images.shape[1:] == (16, 16) and len(s) == len(s.segs) == len(s.subject)
    assert set(np.unique(s.subject)) == {0, 1, 2, 3}
    healthy = s.lesion_free()
    assert len(healthy) < len(s) and not healthy.segs.any()
    one = s.subjects(["sub02"])
    assert set(np.unique(one.subject)) == {2}
    assert [sid for sid, _ in s.per_subject()] == list(s.subject_ids)


def test_cache_is_reused_and_keyed_by_settings(flat_dataset, tmp_path, monkeypatch):
    ds = discover(flat_dataset)
    cache = tmp_path / "cache"
    first = prepare_dataset(ds, "flair", PrepConfig(size=16), cache, progress=False)
    calls = []
    real = slices_module.prepare_volume
    monkeypatch.setattr(
        slices_module, "prepare_volume", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    again = prepare_dataset(ds, "flair", PrepConfig(size=16), cache, progress=False)
    assert calls == [], "second run must load from the cache"
    np.testing.assert_array_equal(first.images, again.images)
    np.testing.assert_array_equal(first.segs, again.segs)
    prepare_dataset(ds, "flair", PrepConfig(size=24), cache, progress=False)
    assert len(calls) == 4, "other settings must not hit the cache"
    assert len(list(cache.glob("prep-*"))) == 2


def test_cache_notices_changed_inputs_and_survives_corrupt_entries(flat_dataset, tmp_path,
                                                                    monkeypatch):  # fmt: skip
    import os

    import nibabel as nib

    ds = discover(flat_dataset)
    cache, prep = tmp_path / "cache", PrepConfig(size=16)
    first = prepare_dataset(ds, "flair", prep, cache, progress=False)
    prepared, real = [], slices_module.prepare_volume

    def preparing(volume, *args, **kwargs):
        prepared.append(volume.source)
        return real(volume, *args, **kwargs)

    monkeypatch.setattr(slices_module, "prepare_volume", preparing)
    # an input rewritten with other contents (a later time): prepared again, from the new data
    image = flat_dataset / "sub01_flair.nii.gz"
    data = np.asarray(nib.load(image).dataobj)
    nib.save(nib.Nifti1Image(data[::-1].copy(), nib.load(image).affine), image)
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    again = prepare_dataset(ds, "flair", prep, cache, progress=False)
    assert prepared == [str(image)], "only the changed scan is prepared again"
    assert not np.array_equal(first.subjects(["sub01"]).images, again.subjects(["sub01"]).images)
    # a cache entry cut short (a crash, a full disk): the scan is prepared again, and re-cached
    entry = max(cache.rglob("sub02-*.npz"), key=lambda p: p.stat().st_mtime_ns)
    entry.write_bytes(entry.read_bytes()[:100])
    prepared.clear()
    third = prepare_dataset(ds, "flair", prep, cache, progress=False)
    assert prepared == [str(flat_dataset / "sub02_flair.nii.gz")]
    np.testing.assert_array_equal(third.images, again.images)
    prepared.clear()
    prepare_dataset(ds, "flair", prep, cache, progress=False)
    assert prepared == [], "the rewritten entry is used"


def test_split_is_by_subject_and_deterministic(flat_dataset):
    ds = discover(flat_dataset)
    a = split_subjects(ds, test_fraction=0.5, val_fraction=0.25, seed=3)
    assert a == split_subjects(ds, test_fraction=0.5, val_fraction=0.25, seed=3)
    ids = a["train"] + a["val"] + a["test"]
    assert sorted(ids) == [s.id for s in ds.subjects]
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (1, 1, 2)


def test_missing_modality_is_a_clear_error(flat_dataset):
    from fae.errors import FaeInputError

    with pytest.raises(FaeInputError, match="no 't2' images"):
        prepare_dataset(discover(flat_dataset), "t2", progress=False)


def test_three_way_split_keeps_selection_apart_from_report_patients():
    from types import SimpleNamespace

    ds = SimpleNamespace(subjects=[SimpleNamespace(id=f"p{i:02d}", split=None) for i in range(80)])
    two = split_subjects(ds, test_fraction=0.35, val_fraction=0.1, seed=0)
    three = split_subjects(ds, test_fraction=0.35, val_fraction=0.1, seed=0, select_fraction=0.15)
    sizes = {part: len(ids) for part, ids in three.items()}
    assert sizes == {"train": 32, "val": 8, "select": 12, "test": 28}
    every = [i for ids in three.values() for i in ids]
    assert sorted(every) == sorted(s.id for s in ds.subjects), "disjoint and complete"
    assert three["test"] == two["test"], "the report patients do not depend on the selection"
    assert two["select"] == [] and set(two["train"]) == set(three["train"] + three["select"])
    assert three == split_subjects(ds, 0.35, 0.1, 0, 0.15), "fixed by the seed"
