from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fae.data.discover import discover, file_role
from fae.errors import FaeInputError

from conftest import head, write_nifti


def test_flat_layout(flat_dataset):
    ds = discover(flat_dataset)
    assert ds.layout == "flat"
    assert [s.id for s in ds.subjects] == ["sub00", "sub01", "sub02", "sub03"]
    assert ds.modalities == ["flair", "t1"]
    assert all(s.seg is not None for s in ds.subjects)
    assert [s.brainmask is not None for s in ds.subjects] == [True, True, False, False]


def test_subject_folders_with_common_namings(tmp_path):
    image = head()[0]
    write_nifti(tmp_path / "BraTS20_Training_001" / "BraTS20_Training_001_flair.nii.gz", image)
    write_nifti(tmp_path / "BraTS20_Training_001" / "BraTS20_Training_001_t1ce.nii.gz", image)
    write_nifti(tmp_path / "BraTS20_Training_001" / "BraTS20_Training_001_seg.nii.gz", image)
    write_nifti(tmp_path / "sub-CC110033" / "sub-CC110033_T2w.nii.gz", image)
    write_nifti(tmp_path / "pat3" / "Flair_subtrMeanDivStd.nii.gz", image)
    write_nifti(tmp_path / "pat3" / "OTMultiClass.nii.gz", image)
    write_nifti(tmp_path / "pat3" / "brainmask.nii.gz", image)
    ds = discover(tmp_path)
    assert ds.layout == "subject-folders"
    by_id = {s.id: s for s in ds.subjects}
    assert sorted(by_id["BraTS20_Training_001"].images) == ["flair", "t1ce"]
    assert by_id["BraTS20_Training_001"].seg is not None
    assert list(by_id["sub-CC110033"].images) == ["t2"]
    assert list(by_id["pat3"].images) == ["flair"]
    assert by_id["pat3"].seg.path.name == "OTMultiClass.nii.gz"
    assert by_id["pat3"].brainmask.path.name == "brainmask.nii.gz"


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz", ("seg", None)),
        ("T2_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz", ("image", "t2")),
        ("FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz", ("image", "flair")),
        ("sub-01_brain_mask.nii.gz", ("brainmask", None)),
        ("case_lesion_mask.nii", ("seg", None)),
        ("sub-01_T1w.nii.gz", ("image", "t1")),
    ],
)
def test_file_roles(name, role):
    assert file_role(Path(name)) == role


def test_datalist_with_modalities_and_splits(tmp_path, flat_dataset):
    csv = tmp_path / "list.csv"
    rel = Path("flat")
    csv.write_text(
        "subject,image,seg,brainmask,split,modality\n"
        f"a,{rel}/sub00_flair.nii.gz,{rel}/sub00_seg.nii.gz,,train,flair\n"
        f"a,{rel}/sub00_t1.nii.gz,{rel}/sub00_seg.nii.gz,,train,t1\n"
        f"b,{flat_dataset}/sub01_flair.nii.gz,,,test,\n"
    )
    ds = discover(csv)
    assert ds.layout == "datalist"
    a, b = ds.subjects
    assert sorted(a.images) == ["flair", "t1"] and a.split == "train"
    assert a.images["flair"].path == tmp_path / "flat" / "sub00_flair.nii.gz"
    assert list(b.images) == ["flair"] and b.split == "test" and b.seg is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("subject,seg\na,x\n", "lacks column"),
        ("subject,image\n", "no rows"),
        ("subject,image,split\na,x.nii.gz,holdout\n", "split 'holdout'"),
        ("subject,image\n,x.nii.gz\n", "line 2: empty subject"),
    ],
)
def test_bad_datalists(tmp_path, text, message):
    csv = tmp_path / "list.csv"
    csv.write_text(text)
    with pytest.raises(FaeInputError, match=message):
        discover(csv)


def test_slice_folders_are_stacked_by_number(tmp_path):
    case = tmp_path / "TCGA_X"
    case.mkdir()
    rng = np.random.default_rng(1)
    for n in (1, 2, 10):
        Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(
            case / f"TCGA_X_{n}.tif"
        )
        Image.fromarray(np.full((6, 6), 255 * (n == 2), np.uint8)).save(
            case / f"TCGA_X_{n}_mask.tif"
        )
    ds = discover(tmp_path, channel_names=["t1", "FLAIR", "t1ce"])
    assert ds.layout == "slice-folders"
    (subject,) = ds.subjects
    assert sorted(subject.images) == ["flair", "t1", "t1ce"]
    assert [p.name for p in subject.images["flair"].paths] == [
        "TCGA_X_1.tif",
        "TCGA_X_2.tif",
        "TCGA_X_10.tif",
    ]
    seg = subject.seg.load()
    assert seg.data.shape == (6, 6, 3) and seg.data[:, :, 1].all() and not seg.data[:, :, 2].any()
    with pytest.raises(FaeInputError, match="3 channels but 2"):
        discover(tmp_path, channel_names=["a", "b"])


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(FaeInputError, match="no images found"):
        discover(tmp_path)
    with pytest.raises(FaeInputError, match="not found"):
        discover(tmp_path / "missing")


def test_subject_with_only_a_mask_is_an_error(tmp_path):
    write_nifti(tmp_path / "a_flair.nii.gz", head()[0])
    write_nifti(tmp_path / "b_seg.nii.gz", head()[1])
    with pytest.raises(FaeInputError, match="subject b has no image"):
        discover(tmp_path)
