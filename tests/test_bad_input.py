"""``fae predict`` on every kind of bad input a user has handed it: one line, no traceback.

Each case is one input (or one setting) that cannot be used. The command must name the file
and the problem in exactly one ``fae: error:`` line, exit non-zero, and write nothing for that
input. Inputs that are bad are skipped (exit 1, the other inputs are still written, here a good
scan beside it); a bad run, setting or output folder stops the command (exit 2).
"""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fae.cli import main
from fae.data.preprocess import PrepConfig
from fae.workflow import RunSpec, train_or_resume

from conftest import TOY_AFFINE, head, write_nifti


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny FAE run on toy heads (3 steps: only the plumbing matters here)."""
    root = tmp_path_factory.mktemp("bad-input")
    for i in range(4):
        image, seg, _ = head(seed=i, lesion=i % 2 == 0)
        write_nifti(root / "data" / f"s{i}_t1.nii.gz", image, TOY_AFFINE)
        write_nifti(root / "data" / f"s{i}_seg.nii.gz", seg, TOY_AFFINE)
    params = {"backbone": "efficientnet-lite0", "train_batchnorm": False, "hidden": [8, 16],
              "batch_size": 4, "steps": 3}  # fmt: skip
    prep = PrepConfig(size=32, brain_mask="nonzero")
    spec = RunSpec(root / "data", "t1", params=params, prep=prep, test_fraction=0.25)
    train_or_resume(spec, root / "run", cache_dir=root / "cache", progress=False)
    return root / "run"


def nifti(path: Path, data, affine=TOY_AFFINE, dtype=None) -> Path:
    image = nib.Nifti1Image(np.asarray(data), affine)
    if dtype is not None:
        image.set_data_dtype(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def patched_header(path: Path, offset: int, value: bytes) -> Path:
    """``path`` (a toy head) with header bytes at ``offset`` overwritten."""
    nifti(path, head()[0])
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[offset : offset + len(value)] = value
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


def raw(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def truncated(path: Path) -> Path:
    nifti(path, head()[0])
    path.write_bytes(path.read_bytes()[:200])
    return path


def short_nii(path: Path) -> Path:
    nifti(path, head()[0])
    path.write_bytes(path.read_bytes()[:-1000])
    return path


def datalist(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "datalist.csv").write_text(text)
    return folder / "datalist.csv"


def with_mask(folder: Path, mask) -> Path:
    nifti(folder / "m_t1.nii.gz", head()[0])
    nifti(folder / "m_brainmask.nii.gz", mask)
    return folder


# (name, make(tmp) -> the bad input, what the one line must say)
BAD_INPUTS = [
    ("missing file", lambda d: d / "nope.nii.gz", "no such file or folder"),
    ("empty folder", lambda d: (d / "e").mkdir() or d / "e", "no images found"),
    ("not an image", lambda d: raw(d / "notes.txt", b"x"), "notes.txt"),
    ("2D image", lambda d: nifti(d / "a.nii.gz", np.ones((20, 20), np.float32)), "3D"),
    ("4D image", lambda d: nifti(d / "a.nii.gz", np.ones((9, 9, 9, 3), np.float32)), "3D"),
    ("NaN voxels", lambda d: nifti(d / "a.nii.gz", np.full((9, 9, 9), np.nan, np.float32)), "NaN"),
    ("infinite voxels",
     lambda d: nifti(d / "a.nii.gz", np.where(head()[2] > 0, np.inf, 0).astype(np.float32)),
     "infinite"),
    ("garbage gzip", lambda d: raw(d / "a.nii.gz", b"\x1f\x8b junk"),
     "cannot read NIfTI"),
    ("empty file", lambda d: raw(d / "a.nii.gz", b""),
     "cannot read NIfTI"),
    ("truncated gzip", lambda d: truncated(d / "a.nii.gz"), "cannot read NIfTI"),
    ("short .nii", lambda d: short_nii(d / "a.nii"), "the file holds"),
    ("huge header", lambda d: patched_header(d / "a.nii.gz", 42, np.array([30000] * 3, "<i2")
                                             .tobytes()), "more than fae reads"),
    ("negative dimension",
     lambda d: patched_header(d / "a.nii.gz", 42, np.array([-5], "<i2").tobytes()),
     "cannot read NIfTI"),
    ("complex data", lambda d: nifti(d / "a.nii.gz", np.ones((9, 9, 9), np.complex64)),
     "complex-valued"),
    ("zero-length axis", lambda d: nifti(d / "a.nii.gz", np.ones((9, 0, 9), np.float32)),
     "a.nii.gz"),
    ("all zeros", lambda d: nifti(d / "a.nii.gz", np.zeros((20, 20, 9), np.float32)),
     "no brain found"),
    ("degenerate affine", lambda d: patched_header(d / "a.nii.gz", 296, bytes(16)),  # srow_y = 0
     "degenerate affine"),
    ("brain mask of another shape",
     lambda d: (with_mask(d / "m", np.ones((5, 5, 5), np.uint8)), ["--brain-mask", "auto"]),
     "shape"),
    ("datalist without image column",
     lambda d: datalist(d / "l", "subject,seg\ns1,x.nii.gz\n"), "datalist.csv"),
    ("datalist naming a missing file",
     lambda d: datalist(d / "l", "subject,image\ns1,gone.nii.gz\n"), "gone.nii.gz"),
]  # fmt: skip


def _one_error(text: str) -> list[str]:
    lines = [line for line in text.strip().splitlines() if "%|" not in line]  # not bars
    return [line for line in lines if line.startswith("fae: error: ")], lines


@pytest.mark.parametrize(
    ("make", "says"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_one_line_and_skipped(run, tmp_path, capsys, make, says):
    good = nifti(tmp_path / "good_t1.nii.gz", head(seed=9)[0])
    made = make(tmp_path)
    bad, extra = made if isinstance(made, tuple) else (made, [])
    out = ["--run", str(run), "--out", str(tmp_path / "o"), *extra]
    code = main(["predict", str(good), str(bad), *out])
    errors, lines = _one_error(capsys.readouterr().err)
    assert code == 1
    assert len(errors) == 1 and says in errors[0], lines
    assert not any("Traceback" in line for line in lines)
    written = sorted(p.name for p in (tmp_path / "o").glob("*.nii.gz"))
    assert written == [f"good_t1_{k}.nii.gz" for k in ("anomaly", "brainmask", "mask")]


def corrupt_checkpoint(run: Path, tmp: Path) -> Path:
    bad = tmp / "run"
    bad.mkdir()
    (bad / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:5000])
    return bad


def pickled_checkpoint(run: Path, tmp: Path) -> Path:
    import argparse

    import torch

    bad = tmp / "run.pt"
    torch.save({"model": argparse.Namespace(a=1)}, bad)  # an arbitrary object: never unpickled
    return bad


# (name, extra arguments given the run and tmp, what the one line must say)
BAD_SETTINGS = [
    ("no run there", lambda run, d: ["--run", str(d / "none")], "none"),
    ("corrupt checkpoint", lambda run, d: ["--run", str(corrupt_checkpoint(run, d))],
     "checkpoint"),
    ("checkpoint with arbitrary objects", lambda run, d: ["--run", str(pickled_checkpoint(run, d))],
     "run.pt"),
    ("uncalibrated false-positive rate", lambda run, d: ["--run", str(run), "--fpr", "0.2"],
     "0.2"),
    ("output is a file", lambda run, d: ["--run", str(run), "--out", str(d / "good_t1.nii.gz")],
     "good_t1.nii.gz"),
    ("bad shard", lambda run, d: ["--run", str(run), "--shard", "3/2"], "--shard"),
    ("unknown device", lambda run, d: ["--run", str(run), "--device", "tpu"], "tpu"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "says"), [c[1:] for c in BAD_SETTINGS], ids=[c[0] for c in BAD_SETTINGS]
)
def test_bad_run_or_setting_stops_with_one_line(run, tmp_path, capsys, extra, says):
    good = nifti(tmp_path / "good_t1.nii.gz", head(seed=9)[0])
    extra = extra(run, tmp_path)
    out = [] if "--out" in extra else ["--out", str(tmp_path / "o")]
    code = main(["predict", str(good), *out, *extra])
    errors, lines = _one_error(capsys.readouterr().err)
    assert code == 2
    assert len(errors) == 1 and says in errors[0], lines
    assert not (tmp_path / "o").exists(), "nothing written"


def _mount(folder: Path, options: str) -> bool:
    """A tiny tmpfs at ``folder`` (needs root and a system that allows it; else skip)."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True)  # fmt: skip
    return done.returncode == 0


@pytest.mark.parametrize(
    ("options", "says"), [("size=96k", "No space left on device"), ("ro,size=1m", "Read-only")]
)
def test_full_or_read_only_output_folder(run, tmp_path, capsys, options, says):
    target = tmp_path / "mnt"
    if not _mount(target, options):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        good = [nifti(tmp_path / f"g{i}_t1.nii.gz", head(seed=i)[0]) for i in range(3)]
        code = main(["predict", *map(str, good), "--run", str(run), "--out", str(target / "o")])
        errors, lines = _one_error(capsys.readouterr().err)
        assert code == 2
        assert len(errors) == 1 and says in errors[0], lines
        files = [p for p in target.rglob("*") if p.is_file()]
        assert [p.name for p in files if p.name.startswith(".")] in ([], [".fae.lock"]), "no temp"
        # what was written before the disk filled is whole: every scan's four outputs and its row
        maps = {p.name.removesuffix("_anomaly.nii.gz") for p in files if "_anomaly" in p.name}
        assert len(files) == len([p for p in files if p.name.startswith(".")]) + (
            4 * len(maps) + (1 if maps else 0)
        )
        if maps:
            rows = (target / "o" / "scores.csv").read_text().splitlines()[1:]
            assert sorted(r.split(",")[0] for r in rows) == sorted(maps)
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_unwritable_cache_costs_speed_not_the_result(flat_dataset, tmp_path, capsys):
    from fae.data.discover import discover
    from fae.data.slices import prepare_dataset

    cache = tmp_path / "ro"
    if not _mount(cache, "ro,size=1m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        ds = discover(flat_dataset)
        slices = prepare_dataset(ds, "flair", PrepConfig(size=16), cache, progress=False)
        assert len(slices) > 0
        assert "cannot write the cache (cannot write (Read-only" in capsys.readouterr().err
    finally:
        subprocess.run(["umount", str(cache)], check=True)
