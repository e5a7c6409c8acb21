"""The distributed context of the one training loop: what differs when it runs data-parallel (torch only, no Ray).

:func:`simgan.training.train` takes a :class:`DistContext`; the default, :data:`SINGLE_PROCESS`, makes every
method a no-op, so single-process training is unchanged. :mod:`simgan.distributed` builds one per Ray Train
worker.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from simgan.data import Dataset, TransitionBatch
from simgan.models import ConditionalGAN
from simgan.world_model import ModelInfo


@dataclass(frozen=True)
class DistContext:
    """How this process takes part in data-parallel training; the default is the single process.

    With ``world_size > 1``, ``torch.distributed`` must already be initialised (Ray Train's ``TorchTrainer`` does
    it: gloo on CPU, NCCL on GPU). Gradients are averaged by one explicit all-reduce of the flattened gradients
    after each backward pass, which is what ``DistributedDataParallel`` computes; the wrapper itself is not used
    because the GAN step calls sub-nets through methods (``gen.mean``, ``gen.residual``), freezes the
    discriminator for the generator step and differentiates twice for the gradient penalty.

    Attributes:
        rank: this process's rank; rank 0 evaluates and writes checkpoints and TensorBoard.
        world_size: number of training processes.
        device: where to train; ``None``: ``config.device``.
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"rank / world_size: expected 0 <= rank < world_size, got {self.rank} / {self.world_size}"
            )

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Replace each parameter's gradient by its mean over ranks (one all-reduce for all of them)."""
        if not self.distributed:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        for p, chunk in zip(parameters, flat.split([g.numel() for g in grads])):
            p.grad = chunk.view_as(p).clone()

    def average(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of ``value`` over ranks (``value`` itself in a single process)."""
        if not self.distributed:
            return value
        value = value.clone()
        torch.distributed.all_reduce(value)
        return value / self.world_size

    def reduce(self, value: torch.Tensor, op: str) -> torch.Tensor:
        """``value`` reduced over ranks with ``op`` ("sum", "min" or "max")."""
        if not self.distributed:
            return value
        value = value.clone()
        ops = {"sum": "SUM", "min": "MIN", "max": "MAX"}
        if op not in ops:
            raise ValueError(f"op: expected one of {sorted(ops)}, got {op!r}")
        torch.distributed.all_reduce(value, op=getattr(torch.distributed.ReduceOp, ops[op]))
        return value

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(values, value)
        return values

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank."""
        if not self.distributed:
            return flag
        values = [flag]
        torch.distributed.broadcast_object_list(values, src=0)
        return bool(values[0])

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank."""
        if not self.distributed:
            return
        for tensor in [*module.parameters(), *module.buffers()]:
            torch.distributed.broadcast(tensor.data, src=0)


SINGLE_PROCESS = DistContext()


def fit_normalizer(
    model: ConditionalGAN, train_split: TransitionBatch, info: ModelInfo, dist: DistContext
) -> None:
    """Fit the normaliser on the training split of *all* ranks (exact moments from all-reduced sums)."""
    norm = model.normalizer
    if not dist.distributed:
        norm.fit(train_split, info)
        return
    count = float(dist.reduce(torch.tensor(float(len(train_split)), dtype=torch.float64), "sum"))
    for name, values in norm.columns(train_split, info).items():
        sums = torch.as_tensor(np.stack([values.sum(0), (values**2).sum(0)]))  # 2 x D
        total = dist.reduce(sums, "sum").numpy()
        mean = total[0] / count
        norm.set_statistics(name, mean, np.sqrt(np.clip(total[1] / count - mean**2, 0.0, None)))


def model_info(dataset: Dataset, dist: DistContext) -> ModelInfo:
    """:meth:`ModelInfo.from_dataset` over the training split of all ranks (initial states, state bounds)."""
    info = ModelInfo.from_dataset(dataset)
    if not dist.distributed:
        return info
    train_split = dataset.train
    starts = train_split.step == 0
    gathered = dist.gather((train_split.episode[starts], info.initial_states))
    episodes = np.concatenate([e for e, _ in gathered])
    initial = np.concatenate([s for _, s in gathered])[np.argsort(episodes, kind="stable")]
    low = dist.reduce(torch.as_tensor(info.state_low), "min").numpy()
    high = dist.reduce(torch.as_tensor(info.state_high), "max").numpy()
    return replace(info, initial_states=initial, state_low=low, state_high=high)


__all__ = ["SINGLE_PROCESS", "DistContext", "fit_normalizer", "model_info"]
