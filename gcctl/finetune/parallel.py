"""Data-parallel fine-tuning under `torchrun`: gathering a batch across processes (the process group itself is `gcctl.distributed`'s).

Each process encodes its share of the global batch; the losses (contrastive, StarFT) compare every sample
with every other, so the shares are gathered and each process computes the loss of the whole global batch.
Gathering with gradients sends each process the gradient of the global loss with respect to its own share,
summed over processes; DistributedDataParallel then averages over processes, which gives exactly the
gradient one process would get on the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from gcctl.distributed import World


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

