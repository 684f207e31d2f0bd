"""The interface every non-diffusion generative family implements, so one training loop drives them all.

A family is an `nn.Module` that owns its networks and its objective:

    groups = family.optimizer_groups()        # {"model": [...]} or {"generator": [...], "discriminator": [...]}
    optimizers = {name: torch.optim.Adam(params) for name, params in groups.items()}
    losses = family.train_step(x, optimizers, generator)   # zero_grad / backward / step inside
    images = family.sample(16, generator)                    # [16, *item_shape] in [-1, 1]
    family.log_likelihood(x)                                 # nats per item, or None
    family.bits_per_dim(x, generator)                        # bits per dimension of 8-bit data, or None

Data arrive in [-1, 1] as floats: images [B, C, H, W] or vectors [B, D].
"""

from __future__ import annotations

import abc
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..seeding import batch_draw

Tensor = torch.Tensor


class GenerativeFamily(nn.Module, abc.ABC):
    """Base class of the generative families; subclasses set `item_shape` and `evaluations_per_sample`."""

    item_shape: Tuple[int, ...]
    # Network evaluations to draw one sample (a batch of n costs the same number of batched calls).
    evaluations_per_sample: int = 1
    # Adam's (beta1, beta2) that suit the family; GANs lower beta1 (Radford et al. 2016).
    adam_betas: Tuple[float, float] = (0.9, 0.999)

    @abc.abstractmethod
    def optimizer_groups(self) -> Dict[str, List[nn.Parameter]]:
        """The parameters of each separately optimized part, by name."""

    @abc.abstractmethod
    def train_step(self, x: Tensor, optimizers: Dict[str, torch.optim.Optimizer], generator: torch.Generator) -> Dict[str, float]:
        """One optimization step on the batch `x` (in [-1, 1]); returns the logged losses."""

    @abc.abstractmethod
    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """`n` samples of shape [n, *item_shape] in the data range [-1, 1]."""

    def log_likelihood(self, x: Tensor) -> Optional[Tensor]:
        """Per-item log-likelihood in nats of the model's own density or mass; None when it has none."""
        return None

    def bits_per_dim(self, x: Tensor, dequantize_generator: torch.Generator) -> Optional[Tensor]:
        """Per-item bits per dimension of 8-bit data (uint8 levels or floats in [-1, 1]); None without a likelihood."""
        return None

    def split_refusal(self, batch: int, parts: int) -> Optional[str]:
        """Why a training step on `batch` items cannot run as `parts` processes (torchrun), each on its equal part
        with the gradients averaged; None when it can: the default, for a loss that is a mean of per-item terms."""
        return None

    def parameter_device_dtype(self) -> Tuple[torch.device, torch.dtype]:
        """Device and floating dtype of the family's parameters."""
        parameter = next(self.parameters())
        return parameter.device, parameter.dtype


def optimize(optimizer: torch.optim.Optimizer, loss: Tensor) -> float:
    """zero_grad, backward, step on one optimizer; returns the loss as a float."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def draw_normal(shape: Sequence[int], generator: torch.Generator, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Standard normal draws made on the generator's device, then moved to `device`; shape[0] is the batch
    (seeding.batch_draw: a process of a torchrun run keeps its rows of the whole batch's draw)."""
    return batch_draw(torch.randn, shape, generator, device=generator.device, dtype=dtype).to(device)


def draw_uniform(shape: Sequence[int], generator: torch.Generator, device: torch.device, dtype: torch.dtype) -> Tensor:
    """U[0, 1) draws made on the generator's device, then moved to `device`; shape[0] is the batch (as draw_normal)."""
    return batch_draw(torch.rand, shape, generator, device=generator.device, dtype=dtype).to(device)
