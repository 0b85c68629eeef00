"""Data-parallel training over the processes that ``torchrun`` starts.

``torchrun --nproc-per-node N -m fae train ...`` runs the same command in N processes (ranks).
Every rank holds the whole model and draws the same global batch of B slices from the same
sampler; rank r trains on rows [r·B/N, (r+1)·B/N) of it, and before each optimiser step the
gradients are averaged over the ranks in one all-reduce — DistributedDataParallel's contract,
done at the optimiser (a hook) rather than by wrapping ``forward``, because the methods'
training steps call their own losses and some have several optimisers (f-AnoGAN). Three things
make N processes compute what one process computes at the same global batch, to floating-point
tolerance:

- BatchNorm normalises with the statistics of the whole global batch (:class:`SyncBatchNorm2d`,
  which also runs on the CPU with gloo, where ``torch.nn.SyncBatchNorm`` does not);
- random numbers used per sample (dropout masks, a VAE's latent noise, f-AnoGAN's noise) are
  drawn for the whole global batch on every rank and each rank keeps its rows
  (:func:`global_draw`), so they are the numbers one process would draw;
- a masked loss is divided by its global pixel count (:func:`global_count`).

Only rank 0 writes the run folder (config, log, checkpoints); every rank can resume from it,
because all ranks hold the same weights and the same random state. Outside ``torchrun`` (no
``WORLD_SIZE``, or 1) every function here is the identity of one process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fae.errors import FaeInputError

TIMEOUT = timedelta(hours=24)


def init_from_env(device: str = "auto") -> bool:
    """Join the process group that ``torchrun`` describes in the environment (NCCL for a GPU,
    gloo for the CPU) and pin this rank's GPU; returns whether training is distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if dist.is_initialized():
        return True
    gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # ranks wait for rank 0 to prepare the data (HD-BET on a new cohort takes hours), and
    # shards of a prediction for the slowest one: far longer than the default 10-30 minutes
    dist.init_process_group("nccl" if gpu else "gloo", timeout=TIMEOUT)
    return True


def close(wait: bool = True) -> None:
    """Leave the process group (at the end of a distributed command). On a clean exit every rank
    first waits for the others, so that none tears its connections down while a peer still
    finishes (gloo then aborts the peer with "terminate called without an active exception");
    after an error (``wait=False``) leave at once: a barrier would hang on a rank that died."""
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


@contextmanager
def leaving() -> Iterator[None]:
    """Leave the process group when the block ends: with the other ranks after a clean exit, at
    once after an error or an interrupt (:func:`close`)."""
    try:
        yield
    except BaseException:
        close(wait=False)
        raise
    close()


def barrier() -> None:
    """Wait until every rank gets here."""
    if rank_and_size()[1] > 1:
        dist.barrier()


def rank_and_size() -> tuple[int, int]:
    """(this process's rank, number of processes); (0, 1) outside ``torchrun``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes outputs and prints: rank 0, or the only process."""
    return rank_and_size()[0] == 0


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (filling caches: brain masks, prepared scans), then the
    other ranks run it (reading those caches)."""
    if not is_main():
        barrier()
    try:
        yield
    finally:  # also when rank 0 fails: the others then meet the same error themselves
        if is_main():
            barrier()


def local_rows(batch: Tensor) -> Tensor:
    """This rank's contiguous share of a global batch (its length divisible by the ranks)."""
    rank, size = rank_and_size()
    if size == 1:
        return batch
    share = len(batch) // size
    return batch[rank * share : (rank + 1) * share]


def check_batch(batch_size: int) -> None:
    """A global batch must split evenly over the ranks (else their losses weigh unequally)."""
    size = rank_and_size()[1]
    if batch_size % size:
        raise FaeInputError(
            None, f"batch size {batch_size} does not split over {size} processes: use a multiple"
        )


def global_draw(draw: Callable[[tuple[int, ...]], Tensor], shape: tuple[int, ...]) -> Tensor:
    """Random numbers for this rank's ``shape[0]`` samples as one process would draw them for
    the whole global batch: ``draw`` (e.g. ``lambda s: torch.randn(s)``) of the global shape on
    every rank (all ranks share the random state), this rank's rows kept."""
    size = rank_and_size()[1]
    if size == 1:
        return draw(shape)
    return local_rows(draw((shape[0] * size, *shape[1:])))


def global_count(count: Tensor) -> Tensor:
    """A denominator of this rank's loss such that the ranks' averaged gradients are those of
    the global batch's loss: the global ``count`` divided by the number of ranks."""
    size = rank_and_size()[1]
    if size == 1:
        return count
    total = count.detach().clone()
    dist.all_reduce(total)
    return total / size


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (so that all stop at the same step)."""
    size = rank_and_size()[1]
    if size == 1:
        return flag
    value = torch.tensor([float(flag)], device=_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean_over_ranks(value: float) -> float:
    """The mean of a number over the ranks (a global batch's loss from its shares)."""
    size = rank_and_size()[1]
    if size == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=_device())
    dist.all_reduce(total)
    return float(total.item()) / size


def _device() -> torch.device:
    """Where the process group's tensors live: this rank's GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def average_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Before each of ``optimizer``'s steps, replace its parameters' gradients by their mean
    over the ranks (one flat all-reduce per step)."""
    size = rank_and_size()[1]
    if size == 1:
        return

    def hook(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    optimizer.register_step_pre_hook(hook)


def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (as DistributedDataParallel starts)."""
    if rank_and_size()[1] == 1:
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def to_data_parallel(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm2d synchronised and every Dropout2d drawing global masks
    (in place; parameters and buffers are the same objects, so optimisers and the state dict
    are unchanged). Does nothing in one process."""
    if rank_and_size()[1] == 1:
        return module
    for child in module.children():
        if type(child) is nn.BatchNorm2d:
            child.__class__ = SyncBatchNorm2d
        elif type(child) is nn.Dropout2d:
            child.__class__ = GlobalDropout2d
        else:
            to_data_parallel(child)
    return module


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch (summed over the
    ranks by a differentiable all-reduce, so gradients flow through them as in one process).
    Evaluation, and training in one process, are ``nn.BatchNorm2d``'s."""

    def forward(self, x: Tensor) -> Tensor:
        size = rank_and_size()[1]
        if not self.training or size == 1:
            return super().forward(x)
        dtype = x.dtype  # statistics in float32 at least, as BatchNorm keeps them
        x = x.to(torch.promote_types(dtype, torch.float32))
        c, dims = x.shape[1], (0, 2, 3)
        n = torch.tensor([x.numel() / c], dtype=x.dtype, device=x.device)
        sums = _SumOverRanks.apply(torch.cat([x.sum(dims), n]))
        count = sums[-1]
        mean = sums[:c] / count  # then the variance in a second pass, as one process does
        var = _SumOverRanks.apply(((x - mean.view(1, c, 1, 1)) ** 2).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                unbiased = var.detach() * count / (count - 1).clamp_min(1)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        shape = (1, c, 1, 1)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(dtype)


class _SumOverRanks(torch.autograd.Function):
    """The sum of a tensor over the ranks; its gradient is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        total = x.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class GlobalDropout2d(nn.Dropout2d):
    """Dropout2d whose channel masks are the global batch's, as one process draws them
    (:func:`global_draw`)."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        keep = 1 - self.p
        shape = (x.shape[0], x.shape[1], 1, 1)
        mask = global_draw(lambda s: x.new_empty(s).bernoulli_(keep), shape).div_(keep)
        return x * mask
