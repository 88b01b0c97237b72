"""Where this process stands among the processes `torchrun` started, and the few collective steps gcctl needs.

The layers that run under torchrun (the feature store's extraction, data-parallel fine-tuning) share these
helpers; `torch.distributed` does the work. Launched without torchrun a process is rank 0 of 1 and every helper
here is a no-op.

A user error under torchrun is agreed on by every process (`raise_if_any_failed`) and printed once: rank 0
prints its `error:` line and every process exits with `AGREED_ERROR_EXIT_CODE` (1): a failure never exits 0,
though torchrun then adds its report of a failed child after that line.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

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


def join_world(device: torch.device, backend: str | None = None) -> World:
    """Join the process group torchrun describes in the environment (MASTER_ADDR, MASTER_PORT too), by `backend`
    (default: nccl for CUDA, else gloo)."""
    world = current_world()
    if world.distributed and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"))
    return world


@contextlib.contextmanager
def joined_world(device: torch.device, backend: str | None = None) -> Iterator[World]:
    """`join_world` for the block; the group is left after it only if this call joined it (a caller that joined
    first, e.g. to agree on errors raised before the work, keeps it)."""
    joined = current_world().distributed and not dist.is_initialized()
    world = join_world(device, backend)
    try:
        yield world
    finally:
        if joined:
            leave_world(world)


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


# What every process exits with after a user error all of them agreed on (rank 0 has printed the one line that
# says what went wrong): the user-error code, so scripts, dvc and torchrun see the failure.
AGREED_ERROR_EXIT_CODE = 1


def raise_if_any_failed(world: World, error: GcctlError | None, value=None) -> list:
    """Every process learns whether any failed with a user error (each passes its own, or None), and all raise
    the first one: a process that stopped alone would leave the others waiting for it at the next collective.
    Otherwise every process's `value` (picklable), in rank order.

    A process that fails passes its error to its next call of this, wherever it stopped, so each call is matched
    by one call in every other process. Under torchrun the error raised is marked `agreed`, `quiet` in every
    process but rank 0 (which prints it) and exits with `AGREED_ERROR_EXIT_CODE` (see `gcctl.cli.main`)."""
    gathered = gather_objects(world, (None if error is None else str(error), value))
    failed = [(rank, message) for rank, (message, _) in enumerate(gathered) if message is not None]
    if not failed:
        return [value for _, value in gathered]
    rank, message = failed[0]
    shared = error if rank == world.rank else GcctlError(f"process {rank} of {world.size} failed: {message}")
    if world.distributed:
        shared.agreed, shared.quiet, shared.exit_code = True, not world.is_main, AGREED_ERROR_EXIT_CODE
    raise shared


def gather_objects(world: World, value) -> list:
    """Every process's `value` (picklable), in rank order."""
    if not world.distributed:
        return [value]
    values = [None] * world.size
    dist.all_gather_object(values, value)
    return values
