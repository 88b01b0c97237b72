"""Where this process stands among the processes `torchrun` started, and the few collective steps gcctl needs.

The layers that run under torchrun (the feature store's extraction, data-parallel fine-tuning) share these
helpers; `torch.distributed` does the work. Launched without torchrun a process is rank 0 of 1 and every helper
here is a no-op.
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


def current_world() -> World:
    """This process's place as torchrun describes it in the environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    return World(rank=int(os.environ["RANK"]), size=size, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def join_world(device: torch.device) -> World:
    """Join the process group torchrun describes in the environment (MASTER_ADDR, MASTER_PORT too)."""
    world = current_world()
    if world.distributed and not dist.is_initialized():
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


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def raise_if_any_failed(world: World, error: GcctlError | None) -> None:
    """Every process learns whether any failed with a user error (each passes its own, or None), and all raise
    the first one: a process that stopped alone would leave the others waiting for it at the next collective."""
    messages = gather_objects(world, None if error is None else str(error))
    failed = [(rank, message) for rank, message in enumerate(messages) if message is not None]
    if failed:
        rank, message = failed[0]
        raise error if rank == world.rank else GcctlError(f"process {rank} of {world.size} failed: {message}")


def gather_objects(world: World, value) -> list:
    """Every process's `value` (picklable), in rank order."""
    if not world.distributed:
        return [value]
    values = [None] * world.size
    dist.all_gather_object(values, value)
    return values
