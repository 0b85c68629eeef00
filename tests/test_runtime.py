"""Precision and allocator settings (fae.runtime): what auto picks, fp32 SSIM inside bf16,
numbers unchanged by the allocator, runs that record their arithmetic. (bf16 maps against fp32
maps of a trained model: tests/test_model.py.)"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import fae.runtime as runtime
from fae.errors import FaeInputError
from fae.methods.fae import FAE
from fae.methods.registry import method_class
from fae.nn.ssim import ssim_map

CPU = torch.device("cpu")
TINY = {"backbone": "efficientnet-lite0", "hidden": [32, 64], "batch_size": 8, "steps": 4}


def slices(n=24, size=64, seed=0):
    rng = np.random.default_rng(seed)
    base = np.clip(rng.normal(0.5, 0.1, (n, size, size)), 0, 1).astype(np.float32)
    return np.stack([np.clip(s + 0.05 * np.roll(s, k, 0), 0, 1) for k, s in enumerate(base)])


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_only_where_native_and_validated(monkeypatch, native):
    monkeypatch.setattr(runtime, "native_bf16", lambda device: native)
    assert runtime.resolve_precision("auto", CPU) == ("bf16" if native else "fp32")
    assert runtime.resolve_precision("auto", CPU, validated=False) == "fp32"
    assert runtime.resolve_precision("bf16", CPU, validated=False) == "bf16"
    assert runtime.resolve_precision("fp32", CPU) == "fp32"
    with pytest.raises(FaeInputError, match="precision must be one of"):
        runtime.resolve_precision("fp16", CPU)
    assert FAE.bf16_validated and not method_class("ae-mse").bf16_validated
    with pytest.raises(FaeInputError, match="precision must be one of"):
        FAE(precision="half")


def test_cpu_bf16_reads_the_instruction_set_flags(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(runtime, "Path", lambda _: info)
    for flags, expected in (
        ("avx512f avx512_bf16", True),
        ("amx_bf16 amx_tile", True),
        ("avx2 avx512f avx512bw", False),
    ):
        runtime._cpu_has_bf16.cache_clear()
        info.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\n")
        assert runtime._cpu_has_bf16() is expected
    runtime._cpu_has_bf16.cache_clear()


def test_ssim_stays_float32_inside_bf16_autocast():
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    reference = ssim_map(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = ssim_map(x, y)
        from_bf16 = ssim_map(x.bfloat16(), y.bfloat16())
    assert inside.dtype == torch.float32 and torch.equal(inside, reference)
    assert from_bf16.dtype == torch.float32
    channels_last = ssim_map(x.to(memory_format=torch.channels_last), y)
    assert torch.equal(channels_last, reference)
    for per_slice in (True, False):  # maps one slice at a time: the same numbers
        assert torch.equal(ssim_map(x, y, per_slice=per_slice), reference)


TRAIN_TWICE = """
import sys, numpy as np, torch
from fae.methods.fae import StructuralFAE
torch.manual_seed(0)
model = StructuralFAE("efficientnet-lite0", weights=None, hidden=(32, 64)).train()
opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
rng = np.random.default_rng(0)
x = torch.from_numpy(rng.uniform(0, 1, (8, 1, 64, 64)).astype(np.float32))
if sys.argv[2] == "tuned":
    from fae.runtime import tune_allocator
    assert tune_allocator()  # glibc on Linux: the setting applies
for _ in range(2):
    loss = model.loss(model.features(x))
    opt.zero_grad()
    loss.backward()
    opt.step()
torch.save(model.state_dict(), sys.argv[1])
"""


def test_the_allocator_setting_changes_no_number(tmp_path):
    """The same training in two fresh processes, glibc's defaults untouched and tuned."""
    states = {}
    for mode in ("default", "tuned"):
        path = tmp_path / f"{mode}.pt"
        subprocess.run([sys.executable, "-c", TRAIN_TWICE, str(path), mode], check=True)
        states[mode] = torch.load(path, weights_only=True)
    for name, value in states["default"].items():
        assert torch.equal(value, states["tuned"][name]), name


def test_allocator_tuning_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("FAE_SYSTEM_MALLOC", "1")
    assert runtime.tune_allocator() is False


def test_runs_record_their_precision(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "native_bf16", lambda device: True)
    est = FAE(progress=False, **TINY).fit(slices(), run_dir=tmp_path / "auto")
    assert est.meta["precision"] == "bf16" and est.config.precision == "auto"
    saved = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert saved["meta"]["precision"] == "bf16" and saved["config"]["precision"] == "auto"
    loaded = FAE.load(tmp_path / "auto", progress=False)
    assert loaded.map_precision(CPU) == "bf16"
    assert FAE.load(tmp_path / "auto", progress=False, precision="fp32").map_precision(CPU) == (
        "fp32"
    )


def test_cli_choices_match_the_library():
    from fae.cli import PRECISION_CHOICES
    from fae.config import PRECISIONS

    assert list(PRECISIONS) == PRECISION_CHOICES
