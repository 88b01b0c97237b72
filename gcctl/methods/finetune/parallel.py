"""Data-parallel fine-tuning under `torchrun`: the process group, and gathering a batch across processes.

Each process encodes its share of the global batch; the losses (contrastive, StarFT) compare every sample
with every other, so the shares are gathered and each process computes the loss of the whole global batch.
Gathering with gradients sends each process the gradient of the global loss with respect to its own share,
summed over processes; DistributedDataParallel then averages over processes, which gives exactly the
gradient one process would get on the global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gcctl.errors import GcctlError


@dataclass(frozen=True)
class World:
    """Where this process stands: rank 0 of 1 when not launched by torchrun."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, rows: torch.Tensor) -> torch.Tensor:
        """This process's contiguous share of a global batch (shares are equal: the batch size is divisible)."""
        per_process = len(rows) // self.size
        return rows[self.rank * per_process : (self.rank + 1) * per_process]


def join_world(device: torch.device) -> World:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR...)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    world = World(rank=int(os.environ["RANK"]), size=size, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world


def process_device(device: torch.device, world: World) -> torch.device:
    """One GPU per process: the local rank picks it when the device names no index."""
    if world.distributed and device.type == "cuda" and device.index is None:
        if world.local_rank >= torch.cuda.device_count():
            raise GcctlError(f"process {world.local_rank} has no GPU ({torch.cuda.device_count()} visible); start one process per GPU")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    return device


def leave_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


class _GatherWithGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), len(tensor)
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor) -> torch.Tensor:
        # Every process computed the same global loss: the gradient of this process's share is the sum
        # of what each process sends back for it.
        gradient = gradient.contiguous().clone()
        dist.all_reduce(gradient)
        return gradient[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """The global batch from every process's share, in rank order; differentiable in this process's share."""
    if not world.distributed:
        return tensor
    if tensor.requires_grad:
        return _GatherWithGradient.apply(tensor)
    parts = [torch.empty_like(tensor) for _ in range(world.size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
