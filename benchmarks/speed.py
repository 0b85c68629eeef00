"""Speed of training and maps: the paper-faithful fp32 path against fae's faster paths.

Every variant runs in a worker process of its own, started fresh, and the workers take turns
(variant A, B, C, A, B, C, ...), so that machine noise hits all of them alike; the table gives
the median over repetitions. One process per variant because the memory allocator's history
changes a process's speed: a step timed after another variant grew the heap is not the step
a fresh process takes (README, "Speed"). The model is
the paper's: ResNet-18 layers 0–2 (random weights: speed does not depend on them), the
autoencoder 100-150-200-300, batch 32, 128×128 slices; EfficientNet-Lite0 (stages 3, 4, 6) too.

Variants (each adds one thing to the row above it):

- ``reference fp32``: the authors' path: fp32, features recomputed every step (the extractor's
  BatchNorm trains, as in their code), glibc's allocator defaults;
- ``+ allocator, per-slice SSIM maps``: freed memory kept for reuse
  (:func:`fae.runtime.tune_allocator`), and maps' SSIM computed one slice at a time;
- ``+ bf16``: convolutions in bfloat16 under autocast, SSIM and loss in float32;
- ``+ channels-last``: the weights in channels-last layout: fae's default on a bf16 CPU;
- ``cached features``: the default path with frozen BatchNorm, features computed once (a
  different model: ``--batchnorm frozen``);
- ``+ torch.compile`` (with ``--compile``; not fae's default): the loss compiled by Inductor.

Then the profile of one training step per path (self time per kind of operation), and a
155-slice volume predicted end to end (read, prepare, map, write) with a trained-for-one-step
run of each backbone. Last line: ``speedup train X.XX inference Y.YY`` (fae's default path over
the reference, ResNet-18).

    python benchmarks/speed.py --json benchmark-output/speed.json
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from tqdm.auto import tqdm

import fae.methods.fae.torch_model as fae_module
from fae.data.discover import Scan
from fae.data.preprocess import PrepConfig
from fae.data.volume import NiftiSource
from fae.io import atomic_path
from fae.methods.fae import FAE, StructuralFAE
from fae.nn.ssim import ssim_map
from fae.predict import predict_scans
from fae.runtime import autocast, native_bf16, prepare_module, tune_allocator

BATCH, SIZE = 32, 128
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Variant:
    name: str
    precision: str = "fp32"
    channels_last: bool = False
    allocator: bool = False
    recompute: bool = True  # features recomputed every step (BatchNorm trains)
    compile: bool = False
    ssim_per_slice: bool = True  # maps: SSIM one slice at a time (fae), or the whole batch


REFERENCE = Variant("reference fp32", ssim_per_slice=False)
DEFAULT = Variant("+ channels-last (fae default)", "bf16", True, True)
VARIANTS = (
    REFERENCE,
    Variant("+ allocator, per-slice SSIM maps", allocator=True),
    Variant("+ bf16", "bf16", allocator=True),
    DEFAULT,
    Variant("cached features", "bf16", True, True, recompute=False),
)
COMPILED = Variant("+ torch.compile", "bf16", True, True, compile=True)


class TrainBench:
    """One variant's model, optimiser and data, ready to time ``steps`` training steps."""

    def __init__(self, variant: Variant, backbone: str, device: torch.device) -> None:
        torch.manual_seed(0)
        self.variant, self.device = variant, device
        self.model = StructuralFAE(backbone, weights=None, train_batchnorm=variant.recompute)
        layout = variant.precision if variant.channels_last else "fp32"
        prepare_module(self.model, layout, device)
        self.optimizer = torch.optim.Adam(self.model.trainable_parameters(), lr=2e-4)
        self.images = torch.rand(BATCH, 1, SIZE, SIZE, device=device)
        self.cached = None
        if not variant.recompute:
            with autocast(variant.precision, device):
                self.cached = self.model.features(self.images)
        self.loss = self.model.loss
        if variant.compile:
            self.loss = torch.compile(self.model.loss)

    def step(self) -> None:
        self.model.train()
        with autocast(self.variant.precision, self.device):
            features = self.model.features(self.images) if self.cached is None else self.cached
            loss = self.loss(features)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()


class InferBench:
    """One variant's model in eval mode, mapping a batch of slices."""

    def __init__(self, variant: Variant, backbone: str, device: torch.device) -> None:
        torch.manual_seed(0)
        self.variant, self.device = variant, device
        self.model = StructuralFAE(backbone, weights=None, train_batchnorm=False).eval()
        prepare_module(self.model, variant.precision if variant.channels_last else "fp32", device)
        self.images = torch.rand(BATCH, 1, SIZE, SIZE, device=device)

    @torch.no_grad()
    def step(self) -> None:
        with autocast(self.variant.precision, self.device):
            self.model(self.images).float().cpu()


def _worker(conn, kind: str, variant: Variant, backbone: str, device: str) -> None:
    """A fresh process holding one bench: warms up, then times steps or profiles on request."""
    if variant.compile:  # compile in this process: no forked compile pool holding our pipe
        os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    torch.manual_seed(0)
    if variant.allocator:  # else glibc's own defaults, untouched, as in a fresh fae before
        tune_allocator()
    if not variant.ssim_per_slice:  # the whole batch at once, as the authors' code and fae did
        fae_module.ssim_map = functools.partial(ssim_map, per_slice=False)
    dev = torch.device(device)
    bench = (TrainBench if kind == "train" else InferBench)(variant, backbone, dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else lambda: None
    bench.step()  # warm-up: allocation, oneDNN kernel choice, compilation
    bench.step()
    conn.send("ready")
    while (request := conn.recv()) != "stop":
        if request == "profile":
            conn.send(profile_step(bench))
            continue
        sync()
        started = time.perf_counter()
        for _ in range(request):
            bench.step()
        sync()
        conn.send((time.perf_counter() - started) / request)


def interleaved(
    kind: str, variants: list[Variant], backbone: str, device: str, reps: int, steps: int
) -> tuple[dict[str, float], dict[str, dict]]:
    """Median seconds per step of each variant, timed in turn ``reps`` times, and the profiles
    of the reference and default training steps."""
    context = mp.get_context("spawn")
    workers = {}
    for variant in tqdm(variants, desc=f"{backbone} {kind}: starting", leave=False):
        parent, child = context.Pipe()
        process = context.Process(target=_worker, args=(child, kind, variant, backbone, device))
        process.start()
        if parent.recv() != "ready":
            raise RuntimeError(f"worker for {variant.name} did not start")
        workers[variant.name] = (parent, process)  # started one by one: no warm-up overlaps
    times: dict[str, list[float]] = defaultdict(list)
    profiles: dict[str, dict] = {}
    try:
        for _ in tqdm(range(reps), desc=f"{backbone} {kind}", leave=False):
            for name, (conn, _) in workers.items():
                conn.send(steps)
                times[name].append(conn.recv())
        if kind == "train":
            for variant in (REFERENCE, DEFAULT):
                conn = workers[variant.name][0]
                conn.send("profile")
                profiles[variant.name] = conn.recv()
    finally:
        for conn, process in workers.values():
            conn.send("stop")
            process.join()
    return {name: statistics.median(t) for name, t in times.items()}, profiles


KINDS = (  # (kind, operator-name fragments), first match wins
    ("convolution, backward", ("convolution_backward",)),
    ("convolution, forward", ("convolution",)),
    ("SSIM blur (matrix products)", ("bmm", "aten::mm", "matmul")),
    ("batch norm", ("batch_norm",)),
    ("optimiser (Adam)", ("_foreach", "lerp", "addcdiv", "sqrt", "Optimizer")),
    ("pooling and resizing", ("pool", "upsample", "interpolate")),
    ("copies and layout", ("copy", "cat", "clone", "contiguous", "_to_", "index")),
    (
        "element-wise (SSIM, activations, dropout)",
        ("mul", "div", "add", "sub", "neg", "relu", "bernoulli", "pow", "where", "fill", "mean"),
    ),
)


def profile_step(bench: TrainBench, steps: int = 2) -> dict[str, float]:
    """Self time per step by kind of operation (seconds)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            bench.step()
    kinds: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith(("autograd::", "ProfilerStep")):
            continue  # wrappers: their children are counted
        kind = next((k for k, frags in KINDS if any(f in event.key for f in frags)), "other")
        kinds[kind] += event.self_cpu_time_total / 1e6 / steps
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))


def make_run(backbone: str, work: Path) -> Path:
    """A run of ``backbone`` trained for one step (speed does not depend on the weights), and a
    240×240×155 skull-stripped volume to predict."""
    run = work / f"run-{backbone}"
    rng = np.random.default_rng(0)
    slices = rng.uniform(0.2, 0.8, (64, SIZE, SIZE)).astype(np.float32)
    weights = "imagenet" if backbone == "efficientnet-lite0" else None
    prep = PrepConfig(brain_mask="nonzero")
    FAE(prep=prep, progress=False, backbone=backbone, weights=weights, steps=1).fit(
        slices, run_dir=run
    )
    if not (work / "volume.nii.gz").exists():
        nib.save(nib.Nifti1Image(_head(), np.eye(4)), work / "volume.nii.gz")
    return run


def _volume_worker(conn, run: Path, variant: Variant, repeats: int) -> None:
    """In a fresh process: predict the volume ``repeats`` + 1 times (the first warms up)."""
    if not variant.allocator:
        os.environ["FAE_SYSTEM_MALLOC"] = "1"
    precision = "fp32" if variant.precision == "fp32" else None  # None: the run's own
    estimator = FAE.load(run, device="cpu", progress=False, precision=precision)
    scan = Scan("volume", NiftiSource(run.parent / "volume.nii.gz"), modality="t1")
    times = []
    for i in range(repeats + 1):
        started = time.perf_counter()
        predict_scans(estimator, [scan], run.parent / f"out-{i}", progress=False)
        times.append(time.perf_counter() - started)
    conn.send(statistics.median(times[1:]))


def volume_seconds(run: Path, variant: Variant, repeats: int = 3) -> dict[str, float]:
    """Seconds to predict one 155-slice volume: in a warm process (read, prepare, map, write),
    and as a whole ``fae predict`` command (Python, imports and loading the run included)."""
    context = mp.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_volume_worker, args=(child, run, variant, repeats))
    process.start()
    warm = parent.recv()
    process.join()
    env = {**os.environ, **({} if variant.allocator else {"FAE_SYSTEM_MALLOC": "1"})}
    command = [sys.executable, "-m", "fae", "predict", "--run", str(run)]
    command += [str(run.parent / "volume.nii.gz"), "--out", str(run.parent / "out-cli")]
    if variant.precision == "fp32":
        command += ["--precision", "fp32"]
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return {"warm": warm, "command": time.perf_counter() - started}


def _head() -> np.ndarray:
    """A skull-stripped 240×240×155 T1-like volume (1 mm voxels): an ellipsoid brain of about
    1.6 litres with smooth texture, zero outside."""
    z, y, x = np.ogrid[-77:78, -120:120, -120:120]
    brain = (x / 70.0) ** 2 + (y / 85.0) ** 2 + (z / 65.0) ** 2 <= 1
    rng = np.random.default_rng(1)
    texture = rng.uniform(200, 800, (155, 240, 240)).astype(np.float32)
    return np.where(brain, texture, 0).astype(np.float32).transpose(2, 1, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--steps", type=int, default=3, help="steps per repetition")
    parser.add_argument("--backbones", default="resnet18,efficientnet-lite0")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if not native_bf16(device):
        print(f"note: {device} has no native bf16; fae's default there is fp32")
    variants = VARIANTS + ((COMPILED,) if args.compile else ())
    results: dict = {"device": str(device), "threads": torch.get_num_threads(), "backbones": {}}
    work = Path(tempfile.mkdtemp(prefix="fae-speed-"))
    for backbone in args.backbones.split(","):
        step_s, profiles = interleaved(
            "train", list(variants), backbone, args.device, args.reps, args.steps
        )
        infer_variants = [v for v in variants if v.recompute and not v.compile]
        infer_s, _ = interleaved(
            "infer", infer_variants, backbone, args.device, args.reps, args.steps
        )
        volume = {}
        if device.type == "cpu":
            run = make_run(backbone, work)
            volume = {v.name: volume_seconds(run, v) for v in (REFERENCE, DEFAULT)}
        results["backbones"][backbone] = {
            "train_steps_per_s": {k: 1 / s for k, s in step_s.items()},
            "inference_slices_per_s": {k: BATCH / s for k, s in infer_s.items()},
            "profile_s_per_step": profiles,
            "volume_155_slices_s": volume,
        }
        _print(backbone, results["backbones"][backbone])
    resnet = results["backbones"].get("resnet18")
    if resnet is not None:
        train_x = (
            resnet["train_steps_per_s"][DEFAULT.name] / resnet["train_steps_per_s"][REFERENCE.name]
        )
        infer_x = (
            resnet["inference_slices_per_s"][DEFAULT.name]
            / resnet["inference_slices_per_s"][REFERENCE.name]
        )
        results["speedup"] = {"train": train_x, "inference": infer_x}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(results, indent=2))
    if resnet is not None:
        print(f"speedup train {train_x:.2f} inference {infer_x:.2f}")


def _print(backbone: str, r: dict) -> None:
    train, infer = r["train_steps_per_s"], r["inference_slices_per_s"]
    ref_train, ref_infer = train[REFERENCE.name], infer[REFERENCE.name]
    print(f"\n{backbone}, batch {BATCH}, {SIZE}×{SIZE}, {torch.get_num_threads()} threads")
    print("| path | train steps/s | × | maps slices/s | × |\n|---|---|---|---|---|")
    for name, steps in train.items():
        slices = infer.get(name)
        cells = f"{slices:.1f} | {slices / ref_infer:.2f}" if slices else "(as above) | "
        print(f"| {name} | {steps:.3f} | {steps / ref_train:.2f} | {cells} |")
    print("\nprofile, seconds per training step by kind of operation:")
    names = list(r["profile_s_per_step"])
    kinds = list(dict.fromkeys(k for p in r["profile_s_per_step"].values() for k in p))
    print("| kind | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for kind in kinds:
        cells = " | ".join(f"{r['profile_s_per_step'][n].get(kind, 0):.3f}" for n in names)
        print(f"| {kind} | {cells} |")
    for name, seconds in r["volume_155_slices_s"].items():
        print(
            f"155-slice volume, {name}: {seconds['warm']:.2f} s end to end in a warm process, "
            f"{seconds['command']:.2f} s as a whole fae predict command"
        )


if __name__ == "__main__":
    main()
