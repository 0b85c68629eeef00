"""Check the CUDA path of every method: train there, and predict the same maps as on the CPU.

For each method: a model trained for a few steps on the CPU is saved, loaded on the GPU and
must give the CPU's anomaly maps (up to float tolerance: TF32 convolutions are allowed on the
GPU); a model is trained on the GPU with a checkpoint, resumed there, and must give finite
maps; and the GPU's training speed at 128×128 with the method's batch size is timed.

    python benchmarks/cuda_check.py --config benchmarks/configs/gpu.toml --out cuda_check.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np
import torch

from fae.methods.base import load_method
from fae.methods.registry import METHODS, method_class


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="TOML with one table per method")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path("cuda_check.json"))
    parser.add_argument("--timed-steps", type=int, default=20, help="steps timed per method")
    args = parser.parse_args()
    overrides = tomllib.loads(args.config.read_text()) if args.config else {}
    images = _brains(96, 128)
    report: dict = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
    }
    failed = []
    for name in args.methods.split(","):
        try:
            report[name] = check(
                name, overrides.get(name, {}), images, args.device, args.timed_steps
            )
        except Exception as error:  # report every method, then fail
            report[name] = {"error": f"{type(error).__name__}: {error}"}
            failed.append(name)
        print(name, json.dumps(report[name]), flush=True)
    args.out.write_text(json.dumps(report, indent=2))
    if failed:
        raise SystemExit(f"CUDA check failed for: {', '.join(failed)}")


def check(name: str, settings: dict, images: np.ndarray, device: str, timed: int) -> dict:
    cls = method_class(name)
    small = {**settings, "batch_size": 8, **cls.settings_for_steps(4)}
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        cpu = cls(device="cpu", progress=False, **small).fit(images[:32], images[32:48])
        cpu.save(path)
        on_cpu = cpu.predict(images[48:64])
        on_gpu = load_method(path, device=device, progress=False).predict(images[48:64])
        scale = float(np.abs(on_cpu).max()) or 1.0
        result["cpu_vs_gpu_max_rel_diff"] = float(np.abs(on_cpu - on_gpu).max()) / scale
        run = Path(tmp) / "run"
        if cls.learns:
            half = {**small, "checkpoint_every": 2, **cls.settings_for_steps(2)}
            cls(device=device, progress=False, **half).fit(images[:32], images[32:48], run)
            # the finished 2-step run trained longer, on the GPU
            resumed = cls.resume(
                run, images[:32], images[32:48], progress=False, device=device, steps=4
            )
            maps = resumed.predict(images[48:64])
            result["gpu_trained_steps"] = resumed.step_
            result["gpu_maps_finite"] = bool(np.isfinite(maps).all())
            result["gpu_steps_per_second"] = _speed(cls, settings, images, device, timed)
    return result


def _speed(cls, settings: dict, images: np.ndarray, device: str, steps: int) -> float:
    """Training steps per second at 128×128 with the method's own batch size."""
    method = cls(device=device, progress=False, **settings)
    method.configure_from_data(images)
    torch.manual_seed(0)
    model = method.build().to(device).train()
    batch = int(method.config.batch_size)
    x = torch.from_numpy(images[np.arange(batch) % len(images)][:, None]).to(device)
    features = model.features(x)
    optimizers = model.configure_optimizers(method.config.lr)
    for step in range(3):
        model.training_step(features, optimizers, step)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    for step in range(3, 3 + steps):
        model.training_step(features, optimizers, step)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - started)


def _brains(n: int, size: int) -> np.ndarray:
    """(n, size, size) smooth random 'slices' in [0, 1]: discs with blurred texture."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    disc = (xx**2 + yy**2 < 0.16).astype(np.float32)
    noise = rng.random((n, size // 8, size // 8)).astype(np.float32)
    texture = np.kron(noise, np.ones((8, 8), np.float32))
    return np.clip(disc * (0.4 + 0.5 * texture), 0, 1).astype(np.float32)


if __name__ == "__main__":
    main()
