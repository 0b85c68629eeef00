"""``fae predict`` / ``fae calibrate``: maps written back in each scan's own space, thresholds."""

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from fae.checkpoint import load_checkpoint, save_checkpoint
from fae.data.discover import Scan
from fae.data.preprocess import PrepConfig, prepare_volume, restore_volume
from fae.data.synthetic import make_synthetic
from fae.data.volume import NiftiSource, Volume
from fae.errors import FaeInputError
from fae.methods.fae import FAE
from fae.predict import Shard, merge_shards, predict_scans
from fae.workflow import RunSpec, train_or_resume

from conftest import fae, head, write_nifti


def reoriented(data: np.ndarray, affine: np.ndarray, ornt: np.ndarray):
    """The same scan stored with other axes: array and affine that describe the same world."""
    out = nib.orientations.apply_orientation(data, ornt)
    return out, affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)


def oblique(affine: np.ndarray, degrees: float) -> np.ndarray:
    """``affine`` rotated about the scanner's z axis (still closest to the same axes)."""
    t = np.deg2rad(degrees)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return rotation @ affine


# a flip of x, and a permutation that puts the axial axis first with y flipped
ORIENTATIONS = [
    np.array([[0, -1], [1, 1], [2, 1]]),
    np.array([[2, 1], [0, -1], [1, 1]]),
]


@pytest.mark.parametrize("ornt", ORIENTATIONS)
def test_restore_undoes_prepare_exactly(ornt):
    # in-plane 32 x 40 is cropped to 32 x 32, and size 32 means no resampling: exact inverse
    image, _, brain = head(shape=(32, 40, 14))
    affine = oblique(np.diag([1.5, 1.2, 3.0, 1.0]), 12)
    config = PrepConfig(size=32, normalize="minmax")

    def prepare_and_restore(data, aff, mask):
        volume, brainmask = Volume(data, aff, None, "x"), Volume(mask, aff, None, "m")
        prepared = prepare_volume(volume, brainmask=brainmask, config=config)
        return restore_volume(prepared.images, prepared)

    base = prepare_and_restore(image, affine, brain)
    assert base.shape == image.shape and base.dtype == np.float32
    window = np.zeros(image.shape, bool)
    window[:, 4:36, :] = True
    inside = (brain > 0) & window
    lo, hi = np.percentile(image[inside], [0.5, 99.5])
    expected = np.where(inside, np.clip((image - lo) / (hi - lo), 0, 1), 0)
    np.testing.assert_allclose(base, expected, atol=1e-5)
    # the same scan stored with flipped / permuted axes comes back in those axes
    data, aff = reoriented(image, affine, ornt)
    mask, _ = reoriented(brain, affine, ornt)
    moved = prepare_and_restore(data, aff, mask)
    np.testing.assert_array_equal(moved, nib.orientations.apply_orientation(base, ornt))


def test_restore_with_resampling_keeps_structures_in_place():
    # a checkerboard of smooth blobs (period 12 voxels) survives 48 -> 32 -> 48 resampling in
    # place: a shift of one voxel along either axis would cost a third of the correlation
    _, _, brain = head(shape=(48, 56, 10))
    x, y, _ = np.meshgrid(*[np.arange(n) for n in brain.shape], indexing="ij")
    blobs = 1.5 + np.sin(2 * np.pi * x / 12) * np.sin(2 * np.pi * y / 12)
    image = (brain * blobs).astype(np.float32)
    prepared = prepare_volume(
        Volume(image, np.eye(4), None, "x"),
        config=PrepConfig(size=32, normalize="minmax", brain_mask="nonzero"),
    )
    restored = restore_volume(prepared.images, prepared)
    assert restored.shape == image.shape
    assert not restored[:, :4].any() and not restored[:, 52:].any(), "cropped away: 0"
    interior = ndimage.binary_erosion(brain > 0, iterations=3)
    interior[:, :4] = interior[:, 52:] = False

    def agreement(reference):
        return np.corrcoef(restored[interior], reference[interior])[0, 1]

    assert agreement(image) > 0.99
    for axis in (0, 1):
        for shift in (-1, 1):
            assert agreement(np.roll(image, shift, axis=axis)) < 0.9, "the test sees a shift"


# --- end to end with a tiny trained run -----------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    make_synthetic(root / "data", 4, seed=2, modalities=("t1",), resolution_mm=2, progress=False)
    params = {
        "backbone": "efficientnet-lite0",
        "train_batchnorm": False,
        "hidden": [16, 32],
        "batch_size": 8,
        "steps": 3,
    }
    spec = RunSpec(root / "data" / "datalist.csv", "t1", params=params, prep=PrepConfig(size=64))
    train_or_resume(spec, root / "run", cache_dir=root / "cache", progress=False)
    return root


def cropped(path, z0: int = 40, z1: int = 56):
    """A scan cut to a few axial slices (fast to predict), with its affine kept consistent."""
    image = nib.load(path)
    data = np.asarray(image.dataobj, np.float32)[:, :, z0:z1]
    shift = np.eye(4)
    shift[2, 3] = z0
    return data, image.affine @ shift


def test_training_calibrates_thresholds(tiny_run):
    ckpt = torch.load(tiny_run / "run" / "checkpoint.pt", weights_only=True)
    calibration = ckpt["calibration"]
    pixel = calibration["pixel"]
    assert set(pixel) == {"0.001", "0.01", "0.05"} and calibration["source"] == "validation"
    assert pixel["0.001"] >= pixel["0.01"] >= pixel["0.05"] > 0
    assert "train_state" in ckpt, "the final checkpoint still resumes"
    assert ckpt["meta"]["intensity"]["n_scans"] >= 1
    # the thresholds hold their false-positive rate on the validation slices they came from
    est = FAE.load(tiny_run / "run", progress=False)
    from fae.data.discover import discover
    from fae.data.slices import prepare_dataset

    dataset = discover(tiny_run / "data" / "datalist.csv")
    val = prepare_dataset(
        dataset, "t1", est.prep, tiny_run / "cache", est.meta["splits"]["val"], False
    ).lesion_free()
    maps = est.predict(val)
    values = maps[val.masks]
    for fpr, t in pixel.items():
        assert np.mean(values >= t) <= float(fpr)
        # and the lowest such threshold: a map value, below which the next one is too many
        assert np.isin(np.float32(t), values)
        assert np.mean(values >= values[values < t].max()) > float(fpr)


def test_predict_writes_maps_in_each_scans_space(tiny_run, tmp_path):
    data, affine = cropped(next((tiny_run / "data").glob("anomalous_*_t1.nii.gz")))
    inputs = tmp_path / "in"
    # the same scan stored three ways: as is, flipped and permuted, and oblique
    variants = {
        "plain": (data, affine),
        "flipped": reoriented(data, affine, ORIENTATIONS[1]),
        "oblique": (data, oblique(affine, 15)),
    }
    for name, (array, affine) in variants.items():
        write_nifti(inputs / f"{name}.nii.gz", array, affine)
    (inputs / "broken.nii.gz").write_bytes(b"not a nifti file")
    out = tmp_path / "out"
    r = fae("predict", "--run", tiny_run / "run", *sorted(inputs.iterdir()), "--out", out)
    assert r.returncode == 1, r.stderr  # one input failed
    assert "broken.nii.gz" in r.stderr and "skipped" in r.stderr
    assert not list(out.glob("broken*"))
    with (out / "scores.csv").open() as fh:
        rows = {row["name"]: row for row in csv.DictReader(fh)}
    assert set(rows) == set(variants)
    maps = {}
    for name, (array, affine) in variants.items():
        anomaly = nib.load(out / f"{name}_anomaly.nii.gz")
        mask = nib.load(out / f"{name}_mask.nii.gz")
        assert anomaly.shape == array.shape == mask.shape
        np.testing.assert_allclose(anomaly.affine, affine, atol=1e-5)
        assert anomaly.get_data_dtype() == np.float32
        maps[name] = np.asarray(anomaly.dataobj)
        threshold = float(rows[name]["pixel_threshold"])
        flagged = np.asarray(mask.dataobj) > 0
        assert int(rows[name]["suspicious_voxels"]) == int(flagged.sum())
        brain = np.asarray(nib.load(out / f"{name}_brainmask.nii.gz").dataobj) > 0
        # the mask is exactly the brain voxels where the map reaches the threshold, both ways
        np.testing.assert_array_equal(flagged, brain & (maps[name] >= threshold))
        assert flagged.any()
        assert brain.shape == array.shape and rows[name]["brain_mask"] == "nonzero"
        assert (brain == (array != 0)).mean() > 0.999, "skull-stripped: the non-zero voxels"
        assert not maps[name][~brain].any() and not flagged[~brain].any(), "0 outside the brain"
        assert anomaly.header["cal_max"] == 0, "the input's display range is not kept"
        assert (out / f"{name}_overlay.png").stat().st_size > 5000
    assert maps["plain"].max() > 0
    # the flipped/permuted copy gives the same map, voxel for voxel, in its own axes
    canonical = {
        name: nib.as_closest_canonical(nib.load(out / f"{name}_anomaly.nii.gz")).get_fdata()
        for name in ("plain", "flipped")
    }
    np.testing.assert_allclose(canonical["flipped"], canonical["plain"], atol=1e-6)
    np.testing.assert_allclose(maps["oblique"], maps["plain"], atol=1e-6)


@pytest.mark.parametrize("source", ["given", "nonzero"])
def test_predict_uses_the_brain_mask_source_the_run_was_trained_with(tiny_run, tmp_path, source):
    run = tmp_path / "run"
    payload = load_checkpoint(tiny_run / "run" / "checkpoint.pt")
    assert payload["prep"]["brain_mask"] == "auto"
    payload["prep"]["brain_mask"] = source
    save_checkpoint({k: v for k, v in payload.items() if k not in ("format", "versions")},
                    run / "checkpoint.pt")  # fmt: skip
    data, affine = cropped(next((tiny_run / "data").glob("anomalous_*_t1.nii.gz")))
    given = ndimage.binary_erosion(data != 0, iterations=3)  # a mask that differs from non-zero
    write_nifti(tmp_path / "in" / "s_t1.nii.gz", data, affine)
    write_nifti(tmp_path / "in" / "s_brainmask.nii.gz", given.astype(np.uint8), affine)
    r = fae("predict", "--run", run, tmp_path / "in", "--out", tmp_path / "out", "--no-cache")
    assert r.returncode == 0, r.stderr
    used = np.asarray(nib.load(tmp_path / "out" / "s_brainmask.nii.gz").dataobj) > 0
    expected = given if source == "given" else data != 0
    assert (used == expected).mean() > 0.999
    amap = np.asarray(nib.load(tmp_path / "out" / "s_anomaly.nii.gz").dataobj)
    assert amap[used].max() > 0 and not amap[~used].any()
    with (tmp_path / "out" / "scores.csv").open() as fh:
        assert next(csv.DictReader(fh))["brain_mask"] == source


def test_predict_can_take_brain_masks_from_elsewhere_than_the_run(tiny_run, tmp_path):
    run = tmp_path / "run"
    payload = load_checkpoint(tiny_run / "run" / "checkpoint.pt")
    payload["prep"]["brain_mask"] = "given"
    save_checkpoint({k: v for k, v in payload.items() if k not in ("format", "versions")},
                    run / "checkpoint.pt")  # fmt: skip
    data, affine = cropped(next((tiny_run / "data").glob("anomalous_*_t1.nii.gz")))
    scan = write_nifti(tmp_path / "in" / "s_t1.nii.gz", data, affine)  # no mask file
    r = fae("predict", "--run", run, scan, "--out", tmp_path / "a", "--no-cache")
    assert r.returncode == 1 and "no brain mask file for this scan" in r.stderr
    r = fae("predict", "--run", run, scan, "--out", tmp_path / "b", "--brain-mask", "nonzero")
    assert r.returncode == 0, r.stderr
    used = np.asarray(nib.load(tmp_path / "b" / "s_t1_brainmask.nii.gz").dataobj) > 0
    assert (used == (data != 0)).mean() > 0.999


@pytest.mark.parametrize("slice_median", [1, 3])
def test_predict_batches_across_scans_without_changing_maps(tiny_run, tmp_path, slice_median):
    """Scans that share a batch are mapped as if alone (with ``slice_median``, too: the
    median never reaches into the next scan's slices)."""
    est = FAE.load(tiny_run / "run", progress=False)
    est.config.slice_median = slice_median
    scans = []
    for i, p in enumerate(sorted((tiny_run / "data").glob("anomalous_*_t1.nii.gz"))):
        path = write_nifti(tmp_path / f"scan{i}.nii.gz", *cropped(p, 30 + 10 * i, 42 + 10 * i))
        scans.append(Scan(f"scan{i}", NiftiSource(path)))
    predict_scans(est, scans, tmp_path / "a", batch_size=1000, progress=False)
    predict_scans(est, scans, tmp_path / "b", batch_size=3, progress=False)
    for scan in scans:
        a = nib.load(tmp_path / "a" / f"{scan.name}_anomaly.nii.gz").get_fdata()
        b = nib.load(tmp_path / "b" / f"{scan.name}_anomaly.nii.gz").get_fdata()
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_predict_warns_about_unlike_scans_and_rejects_uncalibrated_fpr(tiny_run, tmp_path):
    data, affine = cropped(next((tiny_run / "data").glob("anomalous_*_t1.nii.gz")))
    write_nifti(tmp_path / "scan_t2.nii.gz", data, affine)  # named T2, run is T1
    write_nifti(tmp_path / "bright.nii.gz", data * 1000, affine)
    out = tmp_path / "out"
    inputs = [tmp_path / "scan_t2.nii.gz", tmp_path / "bright.nii.gz"]
    r = fae("predict", "--run", tiny_run / "run", *inputs, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "scan_t2.nii.gz: looks like t2, but the run was trained on t1" in r.stderr
    assert "bright.nii.gz: intensity range differs from training" in r.stderr
    with (out / "scores.csv").open() as fh:
        warnings = {row["name"]: row["warnings"] for row in csv.DictReader(fh)}
    assert "intensity range" in warnings["bright"] and "looks like t2" in warnings["scan_t2"]
    r = fae(
        "predict",
        "--run",
        tiny_run / "run",
        tmp_path / "bright.nii.gz",
        "--out",
        out,
        "--fpr",
        "0.2",
    )
    assert r.returncode == 2 and "--fpr 0.2 is not calibrated" in r.stderr
    assert "0.001, 0.01, 0.05" in r.stderr


def test_calibrate_on_other_healthy_scans(tiny_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes((tiny_run / "run" / "checkpoint.pt").read_bytes())
    healthy = tmp_path / "healthy"
    for i, p in enumerate(sorted((tiny_run / "data").glob("healthy_*_t1.nii.gz"))):
        data, affine = cropped(p)
        write_nifti(healthy / f"h{i}_t1.nii.gz", data * 0.5, affine)
    r = fae("calibrate", "--run", run, "--data", healthy, "--no-cache")
    assert r.returncode == 0, r.stderr
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["calibration"]["source"] == str(healthy.resolve())
    before = torch.load(tiny_run / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["calibration"]["pixel"] != before["calibration"]["pixel"]
    assert ckpt["meta"]["intensity"]["p99"][1] < before["meta"]["intensity"]["p99"][1]
    assert ckpt["step"] == before["step"] and "train_state" in ckpt
    saved = json.loads((run / "calibration.json").read_text())
    assert saved["pixel"] == ckpt["calibration"]["pixel"]
    r = fae("calibrate", "--run", run, "--data", tiny_run / "data" / "datalist.csv",
            "--subjects", "val", "--no-cache")  # fmt: skip
    assert r.returncode == 0, r.stderr
    again = torch.load(run / "checkpoint.pt", weights_only=True)["calibration"]
    assert again["pixel"] == before["calibration"]["pixel"], "the run's own validation slices"
    r = fae("calibrate", "--run", run, "--data", tmp_path / "nowhere")
    assert r.returncode == 2 and "nowhere" in r.stderr


@pytest.mark.realdata
def test_predict_real_volume_keeps_its_geometry(tiny_run, tmp_path):
    from conftest import shared_data

    path = next(shared_data("brats2013-flair").glob("*/Flair*.nii.gz"))
    out = tmp_path / "out"
    r = fae("predict", "--run", tiny_run / "run", path, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "fae: warning:" in r.stderr and "intensit" in r.stderr, "z-scored vs [0, 1] training"
    source = nib.load(path)
    anomaly = nib.load(out / f"{path.name.split('.')[0]}_anomaly.nii.gz")
    assert anomaly.shape == source.shape == (240, 240, 155)
    assert nib.aff2axcodes(anomaly.affine) == nib.aff2axcodes(source.affine) == ("L", "P", "S")
    np.testing.assert_allclose(anomaly.affine, source.affine, atol=1e-5)
    # z-scored and skull-stripped: the brain is what differs from the constant background
    data = np.asarray(source.dataobj)
    brain = np.asarray(nib.load(out / f"{path.name.split('.')[0]}_brainmask.nii.gz").dataobj) > 0
    differs = data != data.min()
    assert brain[differs].all() and (brain & ~differs).mean() < 1e-3, "plus holes filled"
    assert 0.05 < brain.mean() < 0.5
    amap = np.asarray(anomaly.dataobj)
    assert amap[brain].mean() > 0 and not amap[~brain].any(), "map inside the brain only"
    with (out / "scores.csv").open() as fh:
        assert next(csv.DictReader(fh))["brain_mask"] == "nonzero"


def test_output_names_stay_unique():
    from fae.data.discover import unique_names

    source = NiftiSource(Path("x.nii.gz"))
    scans = [Scan(n, source) for n in ("a", "a", "a_2", "b")]
    assert [s.name for s in unique_names(scans)] == ["a", "a_2", "a_2_2", "b"]


def test_scans_that_share_a_file_name_are_named_after_their_folders(tmp_path):
    # BraTS-style inputs: the subject is the folder, every file is called FLAIR
    from fae.data.discover import collect_scans

    image = head(shape=(16, 16, 8))[0]
    files = [tmp_path / "patient19" / "FLAIR.nii.gz", tmp_path / "patient26" / "FLAIR.nii.gz",
             tmp_path / "a" / "p1" / "FLAIR.nii.gz", tmp_path / "b" / "p1" / "FLAIR.nii.gz",
             tmp_path / "other" / "T1.nii.gz"]  # fmt: skip
    for path in files:
        write_nifti(path, image)
    scans, failures = collect_scans(files, "flair")
    assert not failures
    assert [s.name for s in scans] == [
        "patient19_FLAIR", "patient26_FLAIR", "a_p1_FLAIR", "b_p1_FLAIR", "T1"
    ]  # fmt: skip
    # the same file given twice has nothing to tell it apart but a number
    scans, _ = collect_scans([files[-1], files[-1]], "t1")
    assert [s.name for s in scans] == ["T1", "T1_2"]


# --- many scans: shards, merge, bounded memory ----------------------------------------------


def _small_scans(tiny_run, folder, n):
    """``n`` small scans cut from the synthetic ones (a few slices each, fast to map)."""
    sources = sorted((tiny_run / "data").glob("*_t1.nii.gz"))
    scans = []
    for i in range(n):
        path = write_nifti(folder / f"s{i}.nii.gz", *cropped(sources[i % len(sources)], 44, 50))
        scans.append(Scan(f"s{i}", NiftiSource(path)))
    return scans


def test_shards_merge_into_what_one_worker_writes(tiny_run, tmp_path):
    est = FAE.load(tiny_run / "run", progress=False)
    scans = _small_scans(tiny_run, tmp_path, 7)
    failures = [("missing.nii.gz", "no such file or folder")]
    predict_scans(est, scans, tmp_path / "one", progress=False, failures=failures)
    seen = []
    for k in (1, 2, 3):
        rows, failed = predict_scans(est, scans, tmp_path / "many", progress=False,
                                     failures=failures, shard=Shard(k, 3))  # fmt: skip
        seen += [row["name"] for row in rows]
        assert [f[0] for f in failed] == (["missing.nii.gz"] if k == 1 else []), "reported once"
        assert not (tmp_path / "many" / "scores.csv").exists()
    assert sorted(seen) == sorted(s.name for s in scans), "every scan in exactly one shard"
    assert seen[:3] == ["s0", "s3", "s6"], "round robin from the K-th input"
    rows, failed = merge_shards(tmp_path / "many")
    assert failed == [("missing.nii.gz", "no such file or folder")]
    one = (tmp_path / "one" / "scores.csv").read_text()
    assert (tmp_path / "many" / "scores.csv").read_text() == one, "same rows, same order"
    outputs = sorted(p.name for p in (tmp_path / "one").iterdir() if not p.name.startswith("."))
    assert {p.name for p in (tmp_path / "many").iterdir()} >= set(outputs)


def test_merge_names_what_is_missing(tiny_run, tmp_path):
    est = FAE.load(tiny_run / "run", progress=False)
    scans = _small_scans(tiny_run, tmp_path, 3)
    predict_scans(est, scans, tmp_path / "p", progress=False, shard=Shard(2, 3))
    with pytest.raises(FaeInputError, match=r"shard\(s\) 1/3, 3/3 not finished"):
        merge_shards(tmp_path / "p")
    assert not (tmp_path / "p" / "scores.csv").exists()
    r = fae("predict", "--merge", tmp_path / "p")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "1/3, 3/3" in r.stderr
    r = fae("predict", "--merge", tmp_path / "nothing")
    assert r.returncode == 2 and "holds no finished shards" in r.stderr
    for bad in ("0/3", "4/3", "2", "a/b"):
        r = fae("predict", tmp_path / "s0.nii.gz", "--run", tiny_run / "run", "--out",
                tmp_path / "x", "--shard", bad)  # fmt: skip
        assert r.returncode == 2 and "--shard must be K/N" in r.stderr, bad
    assert not (tmp_path / "x").exists()


def test_merge_trusts_only_finished_shards(tiny_run, tmp_path, monkeypatch):
    import fae.predict as predict

    est = FAE.load(tiny_run / "run", progress=False)
    scans = _small_scans(tiny_run, tmp_path, 4)
    out = tmp_path / "p"
    for k in (1, 2):
        predict_scans(est, scans, out, progress=False, shard=Shard(k, 2))

    # shard 2 run again and stopped part-way: its old record no longer vouches for its scores
    def broken(self, group, bar):
        raise RuntimeError("stopped")

    monkeypatch.setattr(predict._Writer, "write", broken)
    with pytest.raises(RuntimeError):
        predict_scans(est, scans, out, progress=False, shard=Shard(2, 2))
    with pytest.raises(FaeInputError, match=r"shard\(s\) 2/2 not finished"):
        merge_shards(out)
    monkeypatch.undo()
    predict_scans(est, scans, out, progress=False, shard=Shard(2, 2))
    assert len(merge_shards(out)[0]) == 4
    # a scores file that lists a scan its record does not have is refused
    scores = out / "scores-2.csv"
    text = scores.read_text()
    scores.write_text(text + text.splitlines()[1].replace("s1,", "intruder,") + "\n")
    with pytest.raises(FaeInputError, match="lists intruder, which its shard record"):
        merge_shards(out)


def test_predict_keeps_one_group_of_scans_in_memory(tiny_run, tmp_path, monkeypatch):
    """Scans are read as they are needed and dropped once written: at most one batch's worth
    (plus the scan that fills it) is held, however many scans there are."""
    import fae.predict as predict

    est = FAE.load(tiny_run / "run", progress=False)
    scans = _small_scans(tiny_run, tmp_path, 12)
    slices = len(predict._load(scans[0], est, est.prep, {}, None).prepared.images)
    held, most = set(), [0]
    load, write = predict._load, predict._Writer.write

    def loading(scan, *args):
        held.add(scan.name)
        most[0] = max(most[0], len(held))
        return load(scan, *args)

    def writing(self, group, bar):
        write(self, group, bar)
        held.difference_update(item.scan.name for item in group)

    monkeypatch.setattr(predict, "_load", loading)
    monkeypatch.setattr(predict._Writer, "write", writing)
    predict_scans(est, scans, tmp_path / "p", batch_size=8, progress=False)
    assert len(list((tmp_path / "p").glob("*_anomaly.nii.gz"))) == 12
    assert most[0] <= -(-8 // slices) + 1 < 12
