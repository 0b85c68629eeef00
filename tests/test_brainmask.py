"""Brain masks: the sources, HD-BET's geometry and cache, ``fae data skullstrip``."""

import csv

import nibabel as nib
import numpy as np
import pytest

from fae.data import skullstrip as skullstrip_module
from fae.data.brainmask import (
    MASK_SOURCES,
    background_value,
    brain_mask,
    dark_air,
    has_geometry,
    hd_bet_geometry,
    hd_bet_mask,
    looks_skull_stripped,
    parse_spacing,
)
from fae.data.discover import collect_scans, discover
from fae.data.preprocess import PrepConfig
from fae.data.skullstrip import skullstrip_scans
from fae.data.slices import prepare_dataset
from fae.data.volume import Volume, load_nifti
from fae.errors import FaeInputError

from conftest import fae, shared_data, write_nifti


def toy_head(shape=(48, 48, 40), skull=True, seed=0):
    """A head: brain (two tissues), dark skull, bright scalp, noisy air (or exact zeros outside
    the brain when ``skull=False``). Returns (image, brain)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt((x / 0.9) ** 2 + (y / 0.95) ** 2 + (z / 0.9) ** 2)
    brain = r < 0.6
    image = np.where(brain, 0.5 + 0.2 * (r < 0.3), 0.0)
    if skull:
        image = np.where((r >= 0.6) & (r < 0.7), 0.05, image)  # skull
        image = np.where((r >= 0.7) & (r < 0.85), 0.9, image)  # scalp
        image = image + np.abs(0.02 * rng.standard_normal(shape))  # air is noise, not zero
    return image.astype(np.float32), brain


def vol(data, voxel_mm=4.0, affine=None, source="toy") -> Volume:
    affine = np.diag([voxel_mm] * 3 + [1.0]) if affine is None else affine
    return Volume(np.asarray(data, np.float32), affine, None, source)


def dice(a, b) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_auto_takes_the_given_mask_else_nonzero_for_stripped_scans_else_hd_bet(fake_hd_bet):
    image, brain = toy_head(skull=False)
    stripped = vol(image)
    given = vol(np.roll(brain, 2, axis=0))
    assert looks_skull_stripped(stripped)
    result = brain_mask(stripped, given)
    assert result.method == "given"
    np.testing.assert_array_equal(result.mask, given.data > 0)
    result = brain_mask(stripped)
    assert result.method == "nonzero" and not fake_hd_bet.calls
    np.testing.assert_array_equal(result.mask, brain)
    skull_on, _ = toy_head(skull=True)
    assert not looks_skull_stripped(vol(skull_on))
    assert brain_mask(vol(skull_on)).method == "hd-bet"
    assert len(fake_hd_bet.calls) == 1
    # an explicit hd-bet always runs HD-BET
    assert brain_mask(stripped, None, "hd-bet").method == "hd-bet"
    assert len(fake_hd_bet.calls) == 2


def test_a_z_scored_skull_stripped_scan_has_its_minimum_as_background(fake_hd_bet):
    """BRATS 2013 FLAIR: z-scored inside the brain, -3.2 everywhere outside, no exact zeros."""
    image, brain = toy_head(skull=False)
    z = np.where(brain, (image - image[brain].mean()) / image[brain].std(), -3.2)
    assert not (z == 0).any()
    assert background_value(z) == np.float32(-3.2)
    assert looks_skull_stripped(vol(z))
    result = brain_mask(vol(z))
    assert result.method == "nonzero" and not fake_hd_bet.calls
    np.testing.assert_array_equal(result.mask, brain)
    noisy, _ = toy_head(skull=True)
    assert background_value(noisy) is None


def test_headers_without_orientation_count_as_without_geometry(tmp_path):
    image, _ = toy_head(skull=False)
    nifti = nib.Nifti1Image(image, None)
    nifti.header.set_zooms((4.0, 4.0, 4.0))
    path = tmp_path / "nocodes.nii.gz"
    nib.save(nifti, path)
    loaded = load_nifti(path)
    assert loaded.header["qform_code"] == 0 and loaded.header["sform_code"] == 0
    assert not np.allclose(loaded.affine, np.eye(4)), "nibabel makes up an affine"
    assert not has_geometry(loaded) and not looks_skull_stripped(loaded)
    assert has_geometry(vol(image)) and looks_skull_stripped(vol(image))
    header = nib.Nifti1Image(image, np.eye(4)).header.copy()
    header.set_sform(np.diag([4.0, 4.0, 0.0, 1.0]), code=1)  # the third axis has no length
    header.set_qform(None, code=0)
    nib.save(nib.Nifti1Image(image, None, header), tmp_path / "flat.nii.gz")
    with pytest.raises(FaeInputError, match="degenerate affine"):
        load_nifti(tmp_path / "flat.nii.gz")


def test_hole_filling_follows_the_axial_axis_whatever_the_storage():
    image, _ = toy_head(skull=False)
    image[20:28, 20:28, :] = 0  # a channel from top to bottom: a hole in axial slices only
    axial = brain_mask(vol(image), None, "otsu").mask
    assert axial[22, 22, 20] and not (image != 0)[22, 22, 20]
    for axcodes in ("SAR", "ILA", "LPS"):
        data, affine = reoriented(image, np.diag([4.0, 4.0, 4.0, 1.0]), axcodes)
        for source in ("otsu", "nonzero"):
            stored = brain_mask(vol(data, affine=affine), None, source).mask
            back, _ = reoriented_back(stored, axcodes)
            np.testing.assert_array_equal(back, axial)


def test_zero_background_alone_does_not_make_a_scan_skull_stripped(fake_hd_bet):
    """Many skull-on scans have exact-zero air (39 of the 77 LGG T1 volumes)."""
    image, _ = toy_head(skull=True)
    image[image < 0.03] = 0  # air set to exactly zero
    head_sized = vol(image, voxel_mm=5.0)  # the non-zero head is about 3 litres
    assert np.mean(image == 0) > 0.2
    assert not looks_skull_stripped(head_sized)
    assert brain_mask(head_sized).method == "hd-bet"
    # without geometry there is no size to check: HD-BET, never the head as "brain"
    stripped, _ = toy_head(skull=False)
    assert not looks_skull_stripped(vol(stripped, affine=np.eye(4)))
    assert brain_mask(vol(stripped, affine=np.eye(4))).method == "hd-bet"
    assert len(fake_hd_bet.calls) == 2


def test_explicit_sources():
    image, brain = toy_head(skull=True)
    skull_on = vol(image)
    otsu = brain_mask(skull_on, None, "otsu")
    assert otsu.method == "otsu"
    assert otsu.mask.sum() > 2 * brain.sum(), "otsu is the whole head on a skull-on scan"
    assert otsu.mask[brain].all()
    nonzero = brain_mask(skull_on, vol(brain), "nonzero")
    assert nonzero.method == "nonzero" and nonzero.mask.all(), "the noisy air is non-zero"
    with pytest.raises(FaeInputError, match="no brain mask file for this scan"):
        brain_mask(skull_on, None, "given")
    with pytest.raises(FaeInputError, match="brain mask must be one of"):
        brain_mask(skull_on, None, "bet")
    with pytest.raises(FaeInputError, match="shape"):
        brain_mask(skull_on, vol(brain[:-1]), "given")
    with pytest.raises(FaeInputError, match="HD-BET mode"):
        PrepConfig(hd_bet_mode="quick")


def reoriented(data, affine, axcodes):
    """The same RAS scan stored with the axes ``axcodes``: array and a matching affine."""
    to = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(axcodes)
    )
    out = nib.orientations.apply_orientation(data, to)
    return out, affine @ nib.orientations.inv_ornt_aff(to, data.shape)


def reoriented_back(data, axcodes):
    """An array stored with the axes ``axcodes`` back in RAS order."""
    to = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(axcodes), nib.orientations.axcodes2ornt("RAS")
    )
    return nib.orientations.apply_orientation(data, to), to


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "PLS", "SAR", "ILA"])
def test_hd_bet_sees_the_mni_orientation_and_its_mask_comes_back_in_place(fake_hd_bet, axcodes):
    """HD-BET wants the MNI152 template's axes (LAS) in SimpleITK's (z, y, x) array order."""
    ras = np.zeros((30, 36, 24), np.float32)
    ras[-4:, -5:, -3:] = 1.0  # a block at the right, anterior, superior corner
    ras[2:6, 3:9, 4:7] = 0.5
    data, affine = reoriented(ras, np.diag([1.0, 2.0, 3.0, 1.0]), axcodes)
    mask = hd_bet_mask(vol(data, affine=affine))
    seen, spacing = fake_hd_bet.calls[0]
    assert spacing == (3.0, 2.0, 1.0)  # z (S), y (A), x (L)
    assert seen.shape == (24, 36, 30)
    # superior = high z, anterior = high y, right = low x (x runs towards the left)
    np.testing.assert_array_equal(seen[-3:, -5:, :4], 1.0)
    np.testing.assert_array_equal(seen, ras[::-1].transpose(2, 1, 0))
    np.testing.assert_array_equal(mask, data > data.mean())


def test_scans_without_geometry_get_the_viewer_layout_and_a_guessed_voxel_size(fake_hd_bet):
    data = np.zeros((256, 256, 20), np.float32)
    data[:3, :3, -2:] = 1.0  # row 0 = anterior, column 0 = patient right, last = top
    ornt, voxel = hd_bet_geometry(vol(data, affine=np.eye(4)))
    assert "".join(nib.orientations.ornt2axcodes(ornt)) == "PLS"
    assert voxel == (0.9375, 0.9375, 6.0)
    assert hd_bet_geometry(vol(np.zeros((256, 256, 60)), affine=np.eye(4)))[1][2] == 3.0
    assert hd_bet_geometry(vol(data), spacing=(1.0, 1.0, 5.5))[1] == (1.0, 1.0, 5.5)
    hd_bet_mask(vol(data, affine=np.eye(4)))
    seen, spacing = fake_hd_bet.calls[0]
    assert spacing == (6.0, 0.9375, 0.9375)
    np.testing.assert_array_equal(seen[-2:, -3:, :3], 1.0)


@pytest.mark.parametrize("text", ["1,2", "a,b,c", "0,1,1", "-1,1,1", "nan,1,1", "1,1,inf", ""])
def test_bad_spacing_is_refused(text):
    with pytest.raises(FaeInputError, match="--spacing must be three positive numbers"):
        parse_spacing(text)


def test_a_degenerate_affine_gets_the_guess_and_spacing_overrides_it(fake_hd_bet):
    affine = np.diag([1.0, 1.0, 0.0, 1.0])  # built in code: load_nifti refuses such files
    data = np.zeros((16, 16, 30), np.float32)
    data[4:12, 4:12, 5:25] = 1.0
    assert not has_geometry(vol(data, affine=affine))
    ornt, voxel = hd_bet_geometry(vol(data, affine=affine))
    assert "".join(nib.orientations.ornt2axcodes(ornt)) == "PLS" and voxel == (15.0, 15.0, 6.0)
    mask = hd_bet_mask(vol(data, affine=affine), spacing=(1.0, 1.0, 2.0))
    assert fake_hd_bet.calls[0][1] == (2.0, 1.0, 1.0)
    np.testing.assert_array_equal(mask, data > data.mean())


def test_hd_bet_masks_are_cached_by_content_and_settings(fake_hd_bet, tmp_path):
    image, _ = toy_head(skull=True)
    first = hd_bet_mask(vol(image, source=str(tmp_path / "a.nii.gz")), cache_dir=tmp_path)
    assert len(fake_hd_bet.calls) == 1
    again = hd_bet_mask(vol(image, source="renamed copy"), cache_dir=tmp_path)
    assert len(fake_hd_bet.calls) == 1, "the same scan is stripped once"
    np.testing.assert_array_equal(first, again)
    hd_bet_mask(vol(image), mode="accurate", cache_dir=tmp_path)
    hd_bet_mask(vol(image), tta=True, cache_dir=tmp_path)
    hd_bet_mask(vol(image), spacing=(4, 4, 5), cache_dir=tmp_path)
    changed = image.copy()
    changed[0, 0, 0] += 1
    hd_bet_mask(vol(changed), cache_dir=tmp_path)
    assert len(fake_hd_bet.calls) == 5, "other settings or content: stripped again"
    assert len(list((tmp_path / "brainmask-hd-bet").glob("*.npz"))) == 5


def test_preparation_strips_each_scan_once_through_the_cache(fake_hd_bet, tmp_path):
    root = tmp_path / "data"
    for i in range(2):
        image, _ = toy_head(skull=True, seed=i)
        write_nifti(root / f"s{i}_flair.nii.gz", image, np.diag([4.0, 4.0, 4.0, 1.0]))
    dataset = discover(root)
    cache = tmp_path / "cache"
    first = prepare_dataset(dataset, "flair", PrepConfig(size=32), cache, progress=False)
    assert len(fake_hd_bet.calls) == 2
    # another slice size: new slices, but the masks come from the cache
    prepare_dataset(dataset, "flair", PrepConfig(size=16), cache, progress=False)
    assert len(fake_hd_bet.calls) == 2
    otsu = prepare_dataset(
        dataset, "flair", PrepConfig(size=32, brain_mask="otsu"), cache, progress=False
    )
    # the fake's mask (brain and bright scalp) lies inside the head, which holds the skull too
    assert otsu.masks.sum() > first.masks.sum() and not (first.masks & ~otsu.masks).any()
    assert first.intensity.shape == (2, 2)


def write_scans(root):
    """A skull-on LPS scan and an already skull-stripped one."""
    lps = np.diag([-4.0, -4.0, 4.0, 1.0])
    lps[:3, 3] = [90, 100, -60]
    skull_on, _ = toy_head(skull=True)
    stripped, brain = toy_head(skull=False, seed=1)
    write_nifti(root / "p1_flair.nii.gz", skull_on, lps)
    write_nifti(root / "p2_flair.nii.gz", stripped, np.diag([4.0, 4.0, 4.0, 1.0]))
    return brain


def test_skullstrip_writes_masks_in_the_inputs_space_and_a_datalist(fake_hd_bet, tmp_path):
    brain = write_scans(tmp_path / "in")
    scans, failures = collect_scans([tmp_path / "in"], "flair")
    out = tmp_path / "out"
    rows, failures = skullstrip_scans(scans, out, progress=False)
    assert failures == [] and [r["name"] for r in rows] == ["p1", "p2"]
    assert len(fake_hd_bet.calls) == 1, "the skull-stripped scan is not stripped again"
    assert rows[0]["method"] == "hd-bet fast" and rows[0]["geometry"] == "header"
    assert rows[1]["method"].startswith("nonzero")
    for name in ("p1", "p2"):
        source = nib.load(tmp_path / "in" / f"{name}_flair.nii.gz")
        mask = nib.load(out / f"{name}_brainmask.nii.gz")
        assert mask.shape == source.shape
        np.testing.assert_array_equal(mask.affine, source.affine)
        assert mask.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    np.testing.assert_array_equal(np.asarray(nib.load(out / "p2_brainmask.nii.gz").dataobj), brain)
    # the datalist puts the new masks beside the original images
    dataset = discover(out / "datalist.csv")
    assert [s.id for s in dataset.subjects] == ["p1", "p2"]
    slices = prepare_dataset(
        dataset, "flair", PrepConfig(size=32, brain_mask="given"), progress=False
    )
    assert slices.masks.any()
    with (out / "brainmasks.csv").open() as fh:
        assert [r["name"] for r in csv.DictReader(fh)] == ["p1", "p2"]
    # --force strips the skull-stripped scan too; --stripped writes the stripped image
    rows, _ = skullstrip_scans(scans[1:], out, force=True, stripped=True, progress=False)
    assert rows[0]["method"] == "hd-bet fast" and len(fake_hd_bet.calls) == 2
    stripped = load_nifti(out / "p2_stripped.nii.gz")
    mask = load_nifti(out / "p2_brainmask.nii.gz").data > 0
    assert not stripped.data[~mask].any()


def test_skullstrip_writes_a_scans_files_all_or_none(fake_hd_bet, tmp_path, monkeypatch):
    write_scans(tmp_path / "in")
    scans, _ = collect_scans([tmp_path / "in"], "flair")
    real = skullstrip_module.save_nifti

    def full_disk(data, affine, path, header=None):
        if "stripped" in path.name:
            raise OSError(28, "No space left on device")
        return real(data, affine, path, header)

    monkeypatch.setattr(skullstrip_module, "save_nifti", full_disk)
    out = tmp_path / "out"
    rows, failures = skullstrip_scans(scans, out, stripped=True, progress=False)
    assert rows == [] and len(failures) == 2
    assert "No space left" in failures[0][1]
    assert sorted(p.name for p in out.iterdir()) == ["brainmasks.csv", "datalist.csv"]


def test_skullstrip_cli_skips_bad_inputs_with_one_line_and_exit_1(tmp_path):
    write_scans(tmp_path / "in")
    (tmp_path / "in" / "p1_flair.nii.gz").unlink()  # only the skull-stripped scan: no HD-BET
    (tmp_path / "bad_flair.nii.gz").write_bytes(b"not a nifti")
    bad = tmp_path / "bad_flair.nii.gz"
    r = fae("data", "skullstrip", tmp_path / "in", bad, "--out", tmp_path / "o")
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("fae: error:")]
    assert len(errors) == 1 and "bad_flair.nii.gz" in errors[0] and "cannot read" in errors[0]
    assert (tmp_path / "o" / "p2_brainmask.nii.gz").exists()
    r = fae("data", "skullstrip", tmp_path / "in", "--out", tmp_path / "o", "--spacing", "1,2")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "fae: error: --spacing must be three positive numbers X,Y,Z in mm, not '1,2'"
    ]


def test_cli_offers_every_mask_source():
    from fae.cli import BRAIN_MASK_CHOICES

    assert list(MASK_SOURCES) == BRAIN_MASK_CHOICES


def test_hd_bet_finds_the_brain_of_the_mni_template(real_hd_bet):
    """The real network, offline, on nilearn's MNI152 template at 3 mm: its mask matches the
    template's brain mask."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    template = load_mni152_template(resolution=3)
    brain = np.asarray(load_mni152_brain_mask(resolution=3).dataobj) > 0
    data = np.asarray(template.dataobj, np.float32)
    mask = hd_bet_mask(Volume(data, template.affine, None, "mni152"), mode="fast", device="cpu")
    assert mask.shape == data.shape
    assert dice(mask, brain) > 0.9


@pytest.mark.benchmark
@pytest.mark.realdata
def test_hd_bet_on_a_real_lgg_volume_keeps_the_tumour_inside(real_hd_bet, tmp_path):
    root = shared_data("lgg-flair")
    image = load_nifti(root / "TCGA_CS_4941_19960909_flair.nii.gz")
    lesion = load_nifti(root / "TCGA_CS_4941_19960909_seg.nii.gz").data > 0
    result = brain_mask(image, cache_dir=tmp_path)
    assert result.method == "hd-bet"
    head = brain_mask(image, None, "otsu").mask
    assert (result.mask & lesion).sum() / lesion.sum() > 0.98
    assert 0.3 < result.mask.sum() / head.sum() < 0.8, "the brain is a part of the head"


def test_hd_bet_finding_no_brain_is_an_error_and_its_randomness_stays_inside(
    fake_hd_bet, monkeypatch
):
    import torch

    image, _ = toy_head(skull=True)
    fake_hd_bet.level = 1e9  # finds nothing
    with pytest.raises(FaeInputError, match="HD-BET found no brain"):
        hd_bet_mask(vol(image))

    def drawing(data, spacing, tta):  # HD-BET's own code draws random numbers
        torch.rand(5)
        return (data > data.mean()).astype(np.uint8)

    monkeypatch.setattr("fae.data.brainmask.hd_bet_network", lambda mode, device: drawing)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    hd_bet_mask(vol(image))
    assert torch.equal(torch.rand(3), expected), "the caller's random numbers are unchanged"


def test_a_bright_background_is_darkened_for_hd_bet(fake_hd_bet):
    """Two LGG T1 exports have mid-grey air; HD-BET sees it dark, the head untouched."""
    image, _ = toy_head(skull=True)
    r = np.sqrt(sum(g**2 for g in np.meshgrid(*[np.linspace(-1, 1, n) for n in image.shape],
                                                indexing="ij")))  # fmt: skip
    head = r < 0.85 * 0.9
    noise = 0.01 * np.random.default_rng(1).random(image.shape)
    grey = np.where(head, image, 0.4 + noise).astype(np.float32)
    darkened = dark_air(grey)
    assert (darkened[~head] == grey.min()).mean() > 0.95, "the air"
    np.testing.assert_array_equal(darkened[head], grey[head])
    assert dark_air(image) is image, "dark air is left alone"
    hd_bet_mask(vol(grey))
    seen = fake_hd_bet.calls[0][0]  # RAS stored: LAS flips x, then (z, y, x)
    np.testing.assert_array_equal(seen, dark_air(grey)[::-1].transpose(2, 1, 0))
