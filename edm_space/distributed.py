"""torchrun's processes: this process's rank and the world size (starting torch.distributed from torchrun's
environment), and the end of a distributed command. Training (edm_space.engine's tasks) and generation
(edm_space.generation) split their work by these; without torchrun a command is rank 0 of 1."""

from __future__ import annotations

import os
from typing import Dict, Tuple

import torch
import torch.distributed as dist

__all__ = ["distributed_context", "finish_distributed", "average_gradients_before_step", "mean_over_processes"]


def distributed_context() -> Tuple[int, int]:
    """(rank, world size): torch.distributed's, initialised from torchrun's environment when WORLD_SIZE > 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":  # each process on the GPU of its LOCAL_RANK, before NCCL picks cuda:0 for all
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def finish_distributed() -> int:
    """This process's rank, after a barrier that ends torch.distributed (if it was started); 0 without it."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0
    rank = dist.get_rank()
    dist.barrier()
    dist.destroy_process_group()
    return rank


def average_gradients_before_step(optimizer: torch.optim.Optimizer) -> None:
    """Make every optimizer.step() first replace its parameters' gradients by their mean over the processes
    (one all-reduce): data parallelism for steps that run several optimizers (a GAN's two) or call submodules
    directly, where a DistributedDataParallel wrapper would not see the backward pass."""
    optimizer.register_step_pre_hook(_average_gradients)


def _average_gradients(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([grad.reshape(-1) for grad in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def mean_over_processes(values: Dict[str, float]) -> Dict[str, float]:
    """Each named value averaged over the processes (the same names on each): a global batch's mean of per-part means."""
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces GPU tensors only (this rank's GPU)
    total = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return dict(zip(values, (total / dist.get_world_size()).tolist()))
