"""torchrun's processes: this process's rank and the world size (starting torch.distributed from torchrun's
environment), and the end of a distributed command. Training (edm_space.engine's tasks) and generation
(edm_space.generation) split their work by these; without torchrun a command is rank 0 of 1."""

from __future__ import annotations

import os
from typing import Tuple

import torch
import torch.distributed as dist

__all__ = ["distributed_context", "finish_distributed"]


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
