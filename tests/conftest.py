"""Shared fixtures: tiny volumes and datasets written into tmp_path, and the real-data folder."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

if os.environ.get("PYTEST_XDIST_WORKER"):
    # ``make test`` runs two pytest-xdist workers, one per core: each with one thread, and so the
    # commands it runs (many threads per process on two cores make every process slower). Set
    # before numpy is imported, whose BLAS reads it once: a worker whose numpy kept two threads
    # made maps that differ in the last bit from the same maps made by its one-thread commands.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)  # in case torch was imported before the variable was set

from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np
import pytest

SHARED_DATA = Path(
    os.environ.get("FAE_SHARED_DATA", Path(__file__).parents[1] / ".." / "shared" / "data")
)


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as a module (the scripts are not a package; a script
    may import its sibling scripts, so their folder is on the path while it loads)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def head(shape=(40, 48, 12), seed=0, lesion=True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A toy skull-stripped head: ellipsoid brain with two tissues, noise and a bright lesion."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    brain = (x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 1.2) ** 2 < 1
    image = np.where(
        brain, 0.5 + 0.2 * ((x**2 + y**2) < 0.2) + 0.02 * rng.standard_normal(shape), 0
    )
    seg = np.zeros(shape, np.uint8)
    if lesion:
        seg[((x - 0.3) ** 2 + (y - 0.2) ** 2 + z**2) < 0.04] = 1
        image = np.where(seg > 0, image + 0.3, image)
    return image.astype(np.float32), seg, brain.astype(np.uint8)


# 2 mm voxels: the toy heads are then brain-sized (so skull-stripped by fae's rule, no HD-BET)
TOY_AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def fae(*args, cwd=None, timeout: int = 600) -> subprocess.CompletedProcess:
    """The ``fae`` command line in a subprocess, as a user runs it."""
    cmd = [sys.executable, "-m", "fae", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


@pytest.fixture
def flat_dataset(tmp_path: Path) -> Path:
    """Layout 1: four subjects with flair, t1 and seg; two with brain masks."""
    root = tmp_path / "flat"
    for i in range(4):
        image, seg, brain = head(seed=i, lesion=i % 2 == 0)
        write_nifti(root / f"sub{i:02d}_flair.nii.gz", image, TOY_AFFINE)
        write_nifti(root / f"sub{i:02d}_t1.nii.gz", 1 - image * brain, TOY_AFFINE)
        write_nifti(root / f"sub{i:02d}_seg.nii.gz", seg, TOY_AFFINE)
        if i < 2:
            write_nifti(root / f"sub{i:02d}_brainmask.nii.gz", brain, TOY_AFFINE)
    return root


@pytest.fixture(autouse=True)
def _no_accidental_hd_bet(request, monkeypatch, tmp_path_factory):
    """HD-BET's network takes 10-20 s a scan: a test runs it only if it asks for ``real_hd_bet``;
    ``fake_hd_bet`` stands in for it where only the plumbing around it is tested. Each test gets
    its own ``$FAE_CACHE_DIR``; a command run in a subprocess that strips a scan leaves a mask
    there, which fails the test too."""
    cache = tmp_path_factory.mktemp("fae-cache")
    monkeypatch.setenv("FAE_CACHE_DIR", str(cache))
    asked = "real_hd_bet" in request.fixturenames or "fake_hd_bet" in request.fixturenames
    if not asked:

        def refuse(*args, **kwargs):
            raise AssertionError("HD-BET called by a test that did not ask for it")

        monkeypatch.setattr("fae.data.brainmask.hd_bet_network", refuse)
    yield
    stripped = list(cache.glob("brainmask-hd-bet/*.npz"))
    assert asked or not stripped, "a subprocess ran HD-BET in a test that did not ask for it"


@pytest.fixture
def real_hd_bet():
    """Marks a test that runs HD-BET's real network."""


class FakeHDBet:
    """Stands in for HD-BET's network: the brain is what is brighter than ``level`` times the
    mean; records the (z, y, x) arrays and voxel sizes it was given."""

    def __init__(self, level: float = 1.0) -> None:
        self.level = level
        self.calls: list[tuple[np.ndarray, tuple]] = []

    def __call__(self, data: np.ndarray, spacing: tuple, tta: bool) -> np.ndarray:
        self.calls.append((data.copy(), spacing))
        return (data > self.level * data.mean()).astype(np.uint8)


@pytest.fixture
def fake_hd_bet(monkeypatch) -> FakeHDBet:
    fake = FakeHDBet()
    monkeypatch.setattr("fae.data.brainmask.hd_bet_network", lambda mode, device: fake)
    return fake


def shared_data(name: str) -> Path:
    """Path of a real-data folder in ../shared/data; skips the test when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data {path} not available")
    return path
