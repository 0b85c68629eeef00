"""The training loop shared by every learned method, with exact resume and periodic checkpoints.

Works for any :class:`~fae.nn.module.MapModule` (its ``features``, ``training_step`` and
optimisers; by default Adam on its loss). Features are computed once and reused when they are a
fixed function of the slice (``cache_features``); else they are recomputed per batch.
``precision`` (``"fp32"`` or ``"bf16"``, see :mod:`fae.runtime`) sets the arithmetic of every
forward pass.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from fae import distributed
from fae.config import TrainingConfig
from fae.errors import FaeInputError
from fae.nn.module import MapModule
from fae.runtime import autocast, batched, prepare_module, tune_allocator


class EpochSampler:
    """Batches of indices from a fresh random permutation each epoch, with saveable state."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size = n, min(batch_size, n)
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.generator)
        self.cursor = 0

    def next(self) -> Tensor:
        if self.cursor + self.batch_size > self.n:  # drop the last incomplete batch, like drop_last
            self.perm = torch.randperm(self.n, generator=self.generator)
            self.cursor = 0
        batch = self.perm[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return batch

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "perm": self.perm, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        if len(state["perm"]) != self.n:
            raise FaeInputError(
                None,
                f"the run was trained on {len(state['perm'])} slices, the data now gives "
                f"{self.n}: the training data changed, so the run cannot resume exactly",
            )
        self.generator.set_state(state["generator"])
        self.perm, self.cursor = state["perm"], int(state["cursor"])


@dataclass
class TrainState:
    """What a checkpoint needs to continue training exactly where it stopped."""

    step: int
    optimizers: list[torch.optim.Optimizer]
    sampler: EpochSampler

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "optimizers": [o.state_dict() for o in self.optimizers],
            "sampler": self.sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state: dict) -> None:
        """Optimisers, sampler and step of a saved state (the random state is restored by the
        loop, after anything that might draw from it)."""
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        self.sampler.load_state_dict(state["sampler"])
        self.step = int(state["step"])


def compute_features(
    model: MapModule,
    images: Tensor,
    device: torch.device,
    desc: str,
    progress: bool = True,
    precision: str = "fp32",
) -> Tensor:
    """Frozen features of (N, 1, H, W) images, in eval mode, kept on ``device`` when it is a GPU."""
    model.eval()
    parts = batched(model.features, images, device, precision, desc=desc, progress=progress)
    out = [features for _, features in parts]
    return torch.cat(out) if out else torch.zeros(0)


def validation_loss(
    model: MapModule, features: Tensor, device: torch.device, precision: str = "fp32"
) -> float:
    """Mean training objective over validation features, in eval mode."""
    model.eval()
    total = sum(
        float(loss) * (part.stop - part.start)
        for part, loss in batched(model.loss, features, device, precision)
    )
    return total / max(len(features), 1)


def train(
    model: MapModule,
    config: TrainingConfig,
    train_images: Tensor,
    val_images: Tensor | None,
    device: torch.device,
    resume: dict | None = None,
    on_checkpoint: Callable[[TrainState], None] | None = None,
    on_log: Callable[[dict], None] | None = None,
    progress: bool = True,
    precision: str = "fp32",
    loss_weights: Tensor | None = None,
    fit_features: bool = True,
) -> TrainState:
    """Train ``model.trainable_parameters()`` for ``config.steps`` steps on (N, 1, H, W)
    healthy slices; returns the final state. ``loss_weights`` (N, 1, H, W): the pixels of each
    slice that count in the loss (1), e.g. all but its lesion. ``fit_features=False`` keeps the
    module's feature statistics on a fresh start (fine-tuning a trained module).

    Under ``torchrun`` each process trains on its share of every global batch
    (:mod:`fae.distributed`); the losses and the weights are those of one process.

    ``resume`` is a saved :meth:`TrainState.state_dict` (the model weights already loaded):
    training continues from its step with the same batches and dropout masks as an uninterrupted
    run, also when ``config.steps`` was raised after the run finished. Ctrl-C stops at the end of
    the current step, writes a checkpoint and raises ``KeyboardInterrupt`` (a second Ctrl-C stops
    at once); a killed process resumes from its last periodic checkpoint. The same ``precision``
    gives the same numbers on resume.
    """
    tune_allocator()
    prepare_module(model, precision, device)
    distributed.to_data_parallel(model)
    state = TrainState(
        0,
        model.configure_optimizers(config.lr),
        EpochSampler(len(train_images), config.batch_size, config.seed),
    )
    for optimizer in state.optimizers:
        distributed.average_gradients(optimizer)
    if resume is not None:
        state.load_state_dict(resume)
        if state.step >= config.steps:  # a finished run: nothing to compute
            _restore_rng(resume)  # so that its state, saved again, is the same
            return state
    fresh = resume is None and fit_features
    cached = _training_features(model, train_images, device, fresh, progress, precision)
    distributed.broadcast_module(model)
    val_features = None  # validation loss: rank 0's job
    if val_images is not None and len(val_images) and distributed.is_main():
        val_features = compute_features(
            model, val_images, device, "val features", progress, precision
        )
    # The random state is restored last, after anything above that might draw from it.
    if resume is not None:
        _restore_rng(resume)
    else:
        torch.manual_seed(config.seed)
    _loop(
        model,
        config,
        state,
        train_images,
        cached,
        val_features,
        device,
        precision,
        on_checkpoint,
        on_log,
        progress,
        loss_weights,
    )
    return state


def _restore_rng(saved: dict) -> None:
    torch.set_rng_state(saved["torch_rng"])
    if saved["cuda_rng"] and torch.cuda.is_available():
        if distributed.rank_and_size()[1] > 1:  # rank 0 saved its GPU's state, which all share
            torch.cuda.set_rng_state(saved["cuda_rng"][0])
        else:
            torch.cuda.set_rng_state_all(saved["cuda_rng"])


def _training_features(
    model: MapModule,
    images: Tensor,
    device: torch.device,
    fresh: bool,
    progress: bool,
    precision: str,
) -> Tensor | None:
    """The training features when they are computed once (else ``None``: per batch); on a
    fresh start, the module first fits its feature statistics (:meth:`MapModule.fit_features`)."""
    if fresh and model.fits_features:
        fitted = model.fit_features(
            compute_features(model, images, device, "features", progress, precision)
        )
        return fitted if model.cache_features else None
    if model.cache_features:
        return compute_features(model, images, device, "features", progress, precision)
    return None


def _loop(
    model: MapModule,
    config: TrainingConfig,
    state: TrainState,
    images: Tensor,
    cached: Tensor | None,
    val_features: Tensor | None,
    device: torch.device,
    precision: str,
    on_checkpoint: Callable[[TrainState], None] | None,
    on_log: Callable[[dict], None] | None,
    progress: bool,
    loss_weights: Tensor | None = None,
) -> None:
    """The optimisation steps from ``state.step`` to ``config.steps``, with logs, validation
    and checkpoints."""
    bar = tqdm(
        total=config.steps, initial=state.step, desc="training", unit="step", disable=not progress
    )
    started, loss = time.perf_counter(), float("nan")
    stop = _InterruptFlag()
    try:
        while state.step < config.steps:
            if distributed.any_rank(stop.raised):
                if on_checkpoint is not None and state.step > 0:
                    on_checkpoint(state)
                raise KeyboardInterrupt
            idx = distributed.local_rows(state.sampler.next())
            model.train()
            with autocast(precision, device):
                if cached is not None:
                    features = cached[idx.to(cached.device)].to(device)
                else:
                    features = model.features(images[idx].to(device))
                weight = None if loss_weights is None else loss_weights[idx].to(device).float()
                loss = model.training_step(features, state.optimizers, state.step, weight)
            loss = distributed.mean_over_ranks(loss)
            state.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            step, done = state.step, state.step == config.steps
            val = None
            if val_features is not None and (step % config.val_every == 0 or done):
                val = validation_loss(model, val_features, device, precision)
            if on_log is not None and (step % config.log_every == 0 or val is not None):
                seconds = time.perf_counter() - started
                on_log({"step": step, "loss": loss, "val_loss": val, "seconds": seconds})
            if on_checkpoint is not None and (step % config.checkpoint_every == 0 or done):
                on_checkpoint(state)
    finally:
        stop.restore()
        bar.close()


class _InterruptFlag:
    """While alive, the first Ctrl-C only sets ``raised``; a second one interrupts at once."""

    def __init__(self) -> None:
        self.raised = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self.raised:
            raise KeyboardInterrupt
        self.raised = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
