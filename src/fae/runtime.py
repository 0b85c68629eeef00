"""How the arithmetic runs: numeric precision, the memory allocator and batched no-grad passes
(see README, "Speed").

``bf16``: every convolution and matrix product of the networks runs in bfloat16 under
``torch.autocast``, with the weights in channels-last layout; SSIM, losses, optimiser state and
maps stay float32. ``auto`` picks bf16 for methods validated in it (``bf16_validated``) on
hardware with native bf16 arithmetic: CPUs with AVX-512 BF16 or AMX, CUDA GPUs that support it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from fae.config import BATCH_SIZE, PRECISIONS
from fae.errors import FaeInputError

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
# no mmap at all, and a trim threshold so high that freed memory stays with the process
_TUNED = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))


def resolve_precision(precision: str, device: torch.device, validated: bool = True) -> str:
    """``"fp32"`` or ``"bf16"``: ``auto`` is bf16 only where the hardware has it natively and
    the method was validated in it."""
    if precision not in PRECISIONS:
        raise FaeInputError(None, f"precision must be one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    return "bf16" if validated and native_bf16(device) else "fp32"


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively (not emulated, which is slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and _cpu_has_bf16()


@functools.cache
def _cpu_has_bf16() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap way to tell, so no
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "").split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The context that runs a network's forward (and so its backward) at ``precision``."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def prepare_module(module: nn.Module, precision: str, device: torch.device) -> nn.Module:
    """Move ``module`` to ``device``, for bf16 in channels-last layout (what oneDNN's and cuDNN's
    fast bf16 convolutions use), for fp32 in the default layout that fp32 runs were made in."""
    layout = torch.channels_last if precision == "bf16" else torch.contiguous_format
    return module.to(device, memory_format=layout)


def tune_allocator() -> bool:
    """Keep freed memory in the process for reuse (glibc only; returns whether it applied).

    By default glibc hands every allocation above 32 MiB to the kernel with ``mmap`` and back
    with ``munmap``; a 32-slice batch of 256×32×32 float32 features is exactly that size, so
    every intermediate tensor of a training step was page-faulted and zeroed afresh (README,
    "Speed": the largest single gain for ResNet-18). ``FAE_SYSTEM_MALLOC=1`` turns
    it off.
    """
    if os.environ.get("FAE_SYSTEM_MALLOC") == "1" or not sys.platform.startswith("linux"):
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return all([bool(mallopt(param, value)) for param, value in _TUNED])


@functools.cache
def _mallopt():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has mallopt with these meanings
        return libc.mallopt
    except (OSError, AttributeError, TypeError):
        return None


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive index ranges that cover ``range(n)``, ``size`` at a time."""
    return (slice(start, min(start + size, n)) for start in range(0, n, size))


def batched(
    fn: Callable[[Tensor], Tensor],
    inputs: Tensor | np.ndarray,
    device: torch.device,
    precision: str = "fp32",
    batch_size: int = BATCH_SIZE,
    desc: str | None = None,
    progress: bool = False,
) -> Iterator[tuple[slice, Tensor]]:
    """``fn`` over (N, ...) ``inputs`` in batches on ``device`` at ``precision``, without
    gradients: yields each batch's index range and output. Every pass that needs no gradient
    (features, validation loss, maps) goes through here."""
    parts = list(chunks(len(inputs), batch_size))
    for part in tqdm(parts, desc=desc, unit="batch", leave=False, disable=not progress):
        x = inputs[part]
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        with torch.no_grad(), autocast(precision, device):
            out = fn(x.to(device))
        yield part, out
