"""Data-parallel training (``torchrun``, gloo on the CPU): two processes compute what one does.

The library test runs the training loop in float64, where one and two processes must agree to
1e-9 if the mechanisms are right (global BatchNorm statistics, global dropout masks and noise,
averaged gradients, the masked loss's global denominator); dropping any of them moves the loss
curve by 1e-4 or more. The command-line tests run ``torchrun -m fae train`` itself.
"""

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from fae import distributed
from fae.config import TrainingConfig
from fae.data.synthetic import make_synthetic
from fae.distributed import global_draw
from fae.nn.module import MapModule
from fae.train import train

STEPS = 8


class Toy(MapModule):
    """Every per-sample random draw and batch statistic the methods use, in float64."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Dropout2d(0.3),
            nn.Conv2d(6, 1, 3, padding=1),
        ).double()

    def features(self, x):
        return x.double()

    def reconstruct(self, features):
        noise = global_draw(lambda s: torch.randn(s, dtype=torch.float64), (len(features), 1, 1, 1))
        return self.net(features) + 0.05 * noise  # like a VAE's latent noise

    def residual(self, features, reconstruction):
        return (features - reconstruction) ** 2


def _fit(out: Path, resume_at: int | None = None) -> None:
    """Train the toy on fixed data; rank 0 (or the only process) saves losses and weights."""
    torch.manual_seed(0)
    model = Toy()
    data = torch.Generator().manual_seed(1)
    images = torch.rand(24, 1, 12, 12, generator=data)
    weights = torch.rand(24, 1, 12, 12, generator=data) > 0.2  # a masked loss
    config = TrainingConfig(lr=0.01, batch_size=8, steps=STEPS, seed=3, log_every=1)
    losses = []
    state = train(
        model, config, images, None, torch.device("cpu"), progress=False,
        on_log=lambda row: losses.append(row["loss"]), loss_weights=weights,
    )  # fmt: skip
    if distributed.is_main():
        torch.save({"losses": losses, "weights": model.state_dict(), "step": state.step}, out)


def _worker(rank: int, size: int, port: int, out: Path) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(size), LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    assert distributed.init_from_env("cpu")
    with distributed.leaving():
        _fit(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_as_one(tmp_path):
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    _fit(one)
    mp.spawn(_worker, args=(2, _free_port(), two), nprocs=2, join=True)
    a, b = torch.load(one, weights_only=True), torch.load(two, weights_only=True)
    assert a["step"] == b["step"] == STEPS and len(a["losses"]) == STEPS
    assert a["losses"][-1] < a["losses"][0] - 0.01, "the toy learns something"
    assert torch.allclose(torch.tensor(a["losses"]), torch.tensor(b["losses"]), rtol=0, atol=1e-9)
    for name, value in a["weights"].items():
        assert torch.allclose(value.double(), b["weights"][name].double(), atol=1e-9), name


def test_one_process_is_untouched():
    """Outside torchrun the helpers are the identity and the layers stay torch's."""
    model = nn.Sequential(nn.BatchNorm2d(2), nn.Dropout2d(0.5))
    assert distributed.to_data_parallel(model) is model
    assert [type(m) for m in model] == [nn.BatchNorm2d, nn.Dropout2d]
    x = torch.arange(6.0)
    assert distributed.local_rows(x) is x and distributed.rank_and_size() == (0, 1)
    torch.manual_seed(0)
    drawn = global_draw(lambda s: torch.randn(s), (3, 2))
    torch.manual_seed(0)
    assert torch.equal(drawn, torch.randn(3, 2))


# --- the command line under torchrun ----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "data"
    make_synthetic(out, 4, seed=1, modalities=("t1",), resolution_mm=2, progress=False)
    return out / "datalist.csv"


def _train(tmp_path: Path, data: Path, out: Path, *extra: str, processes: int = 1):
    config = tmp_path / "tiny.toml"
    config.write_text(
        "hidden = [16, 32]\nbatch_size = 8\nlog_every = 1\nval_every = 4\ncheckpoint_every = 2\n"
    )
    args = ["train", "--data", str(data), "--config", str(config), "--backbone",
            "efficientnet-lite0", "--size", "64", "--brain-mask", "nonzero", "--cache-dir",
            str(tmp_path / "cache"), "--out", str(out), *extra]  # fmt: skip
    head = [sys.executable, "-m", "fae"]
    if processes > 1:
        head = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                str(processes), "--master-port", str(_free_port()), "-m", "fae"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*head, *args], capture_output=True, text=True, timeout=600, env=env)


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _losses(run: Path) -> list[float]:
    return [float(row["loss"]) for row in _rows(run / "train_log.csv")]


def test_torchrun_fae_train(tiny_data, tmp_path):
    """Two processes: the same loss curve as one (float32: to 1e-3, the size of the difference
    between one process on one and on two threads here), one writer, exact resume."""
    one = _train(tmp_path, tiny_data, tmp_path / "one", "--steps", "6")
    assert one.returncode == 0, one.stderr
    r = _train(tmp_path, tiny_data, tmp_path / "two", "--steps", "6", processes=2)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("run ") == 1, "only rank 0 prints"
    two = _losses(tmp_path / "two")
    assert len(two) == 6, "one log row per step: only rank 0 writes"
    assert max(abs(a - b) for a, b in zip(_losses(tmp_path / "one"), two, strict=True)) < 1e-3
    # interrupted at step 4 (a checkpoint), then resumed under torchrun: the same numbers
    cut = _train(tmp_path, tiny_data, tmp_path / "cut", "--steps", "4", processes=2)
    assert cut.returncode == 0, cut.stderr
    resumed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
         str(_free_port()), "-m", "fae", "train", "--resume", str(tmp_path / "cut"), "--steps",
         "6"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert _losses(tmp_path / "cut") == two, "resume under torchrun is exact"
    a = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # prediction: each rank maps its share of the scans, rank 0 merges the scores
    inputs = [str(tiny_data.parent), "--run", str(tmp_path / "two"), "--brain-mask", "nonzero"]
    out = ["--out", str(tmp_path / "p1")]
    one = subprocess.run([sys.executable, "-m", "fae", "predict", *inputs, *out],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
         str(_free_port()), "-m", "--", "fae", "predict", *inputs, "--out", str(tmp_path / "p2")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "merged 4 scans" in r.stdout and (tmp_path / "p2" / "scores-2.csv").exists()
    p1, p2 = (_rows(tmp_path / p / "scores.csv") for p in ("p1", "p2"))
    assert [r["name"] for r in p1] == [r["name"] for r in p2], "the inputs' order"
    for a, b in zip(p1, p2, strict=True):
        assert abs(float(a["scan_score"]) - float(b["scan_score"])) < 1e-5


def test_torchrun_batch_must_split(tiny_data, tmp_path):
    r = _train(tmp_path, tiny_data, tmp_path / "r", "--steps", "2", "--batch-size", "7",
               processes=2)  # fmt: skip
    assert r.returncode != 0
    assert "batch size 7 does not split over 2 processes" in r.stderr
    assert not (tmp_path / "r" / "config.json").exists(), "refused before writing the run"
