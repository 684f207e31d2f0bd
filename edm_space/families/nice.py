"""NICE (Dinh, Krueger & Bengio 2014): additive couplings and a diagonal scaling, with exact likelihood.

The flow f maps a flattened item x to a latent h = f(x) whose prior factorizes
(standard logistic or standard Gaussian). Each coupling keeps one half of the
coordinates (even or odd indices, alternating) and shifts the other half by an
MLP of the kept half (NICE Sec. 3.2, additive coupling):

    y_keep = x_keep,   y_change = x_change + m(x_keep),

which has unit Jacobian determinant. The last layer scales every coordinate,
h = exp(s) * y, so (NICE eq. 6)

    log p(x) = sum_d log p_H(h_d) + sum_d s_d.

Sampling runs the inverse pass once: x = f^{-1}(h), h drawn from the prior.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError, unknown
from .base import GenerativeFamily, draw_normal, draw_uniform, optimize
from .bits import DEQUANTIZED_SCALE, bits_per_dim, dequantize, dequantized_bits_per_dim, to_levels
from ..registry import Option

Tensor = torch.Tensor


def logistic_log_prob(h: Tensor) -> Tensor:
    """Elementwise log density of the standard logistic: -log(1 + e^h) - log(1 + e^-h) (NICE Sec. 3.4)."""
    return -F.softplus(h) - F.softplus(-h)


def logistic_draw(shape: Sequence[int], generator: torch.Generator, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Standard logistic draws by inverting its CDF: h = log u - log(1 - u)."""
    tiny = torch.finfo(dtype).tiny
    u = draw_uniform(shape, generator, device, dtype).clamp(min=tiny, max=1.0 - torch.finfo(dtype).eps)
    return torch.log(u) - torch.log1p(-u)


def gaussian_log_prob(h: Tensor) -> Tensor:
    """Elementwise log density of the standard normal."""
    return -0.5 * h * h - 0.5 * math.log(2.0 * math.pi)


# Prior name -> (elementwise log density, sampler).
PRIORS: Dict[str, Tuple[Callable[[Tensor], Tensor], Callable[..., Tensor]]] = {
    "logistic": (logistic_log_prob, logistic_draw),
    "gaussian": (gaussian_log_prob, draw_normal),
}


class AdditiveCoupling(nn.Module):
    """y_keep = x_keep, y_change = x_change + m(x_keep) on flat vectors; `parity` picks which indices are kept."""

    def __init__(self, dim: int, parity: int, width: int, depth: int):
        super().__init__()
        self.register_buffer("keep", torch.arange(parity % 2, dim, 2), persistent=False)
        self.register_buffer("change", torch.arange(1 - parity % 2, dim, 2), persistent=False)
        layers: List[nn.Module] = []
        size = len(self.keep)
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        layers.append(nn.Linear(size, len(self.change)))
        self.shift = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """The coupling's forward map (data side -> latent side)."""
        y = x.clone()
        y[:, self.change] = x[:, self.change] + self.shift(x[:, self.keep])
        return y

    def inverse(self, y: Tensor) -> Tensor:
        """The exact inverse: x_change = y_change - m(y_keep)."""
        x = y.clone()
        x[:, self.change] = y[:, self.change] - self.shift(y[:, self.keep])
        return x


class NICE(GenerativeFamily):
    """NICE on flattened items: `couplings` additive couplings, then a diagonal scaling, over a factorized prior.

    Options: couplings (4 in the paper), width and depth of each coupling's MLP
    (the paper's MNIST model: 1000 units, 5 hidden layers), prior "logistic"
    (the paper's) or "gaussian", and dequantize: train on uniformly dequantized
    8-bit data (default: on for image items [C, H, W], off for vectors).
    """

    # Bounds of the options (edm_space.registry), checked before the family is built.
    OPTIONS = {"couplings": Option.integer(1, 1024), "width": Option.integer(1, 1 << 16), "depth": Option.integer(1, 1024),
               "prior": Option.name(*PRIORS, label="NICE prior"), "dequantize": Option("flag", optional=True)}

    def __init__(self, item_shape: Sequence[int], couplings: int = 4, width: int = 256, depth: int = 3, prior: str = "logistic", dequantize: Optional[bool] = None):
        super().__init__()
        self.item_shape = tuple(int(s) for s in item_shape)
        self.dim = math.prod(self.item_shape)
        if prior not in PRIORS:
            raise unknown("NICE prior", prior, list(PRIORS))
        if couplings < 0:
            raise ConfigError(f"NICE couplings must be >= 0; got {couplings}")
        if couplings and self.dim < 2:
            raise ConfigError(f"NICE couplings split an item in two halves, so need at least 2 dimensions; items have {self.dim} (use couplings=0)")
        self.prior = prior
        self.prior_log_prob, self.prior_draw = PRIORS[prior]
        self.train_on_dequantized = len(self.item_shape) == 3 if dequantize is None else bool(dequantize)
        self.couplings = nn.ModuleList(AdditiveCoupling(self.dim, parity=i, width=width, depth=depth) for i in range(couplings))
        self.log_scale = nn.Parameter(torch.zeros(self.dim))
        self.evaluations_per_sample = 1

    def optimizer_groups(self) -> Dict[str, List[nn.Parameter]]:
        return {"model": list(self.parameters())}

    def encode(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """h = f(x) for items x [B, *item_shape] and log|det df/dx| per item (= sum of log-scales)."""
        y = x.reshape(x.shape[0], self.dim)
        for coupling in self.couplings:
            y = coupling(y)
        h = y * torch.exp(self.log_scale)
        return h, self.log_scale.sum().expand(x.shape[0])

    def decode(self, h: Tensor) -> Tensor:
        """x = f^{-1}(h) for latents h [B, D], as items [B, *item_shape] (not clamped)."""
        y = h * torch.exp(-self.log_scale)
        for coupling in reversed(self.couplings):
            y = coupling.inverse(y)
        return y.reshape(h.shape[0], *self.item_shape)

    def log_likelihood(self, x: Tensor) -> Tensor:
        """log p(x) in nats per item over R^D (NICE eq. 6)."""
        h, log_det = self.encode(x)
        return self.prior_log_prob(h).sum(dim=1) + log_det

    def train_step(self, x: Tensor, optimizers: Dict[str, torch.optim.Optimizer], generator: torch.Generator) -> Dict[str, float]:
        """One maximum-likelihood step; logs the mean negative log-likelihood (and bits/dim when dequantizing)."""
        _, dtype = self.parameter_device_dtype()
        y = dequantize(to_levels(x), generator, dtype) if self.train_on_dequantized else x.to(dtype)
        log_likelihood = self.log_likelihood(y)
        nll = optimize(optimizers["model"], -log_likelihood.mean())
        losses = {"nll": nll}
        if self.train_on_dequantized:
            losses["bits_per_dim"] = float(bits_per_dim(log_likelihood.detach(), self.dim, DEQUANTIZED_SCALE).mean())
        return losses

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """Draw h from the prior, run the inverse pass, clamp to the data range [-1, 1]."""
        device, dtype = self.parameter_device_dtype()
        h = self.prior_draw((n, self.dim), generator, device, dtype)
        return self.decode(h).clamp(-1.0, 1.0)

    def bits_per_dim(self, x: Tensor, dequantize_generator: torch.Generator) -> Tensor:
        """Bits per dimension on uniformly dequantized 8-bit data (see families.bits)."""
        _, dtype = self.parameter_device_dtype()
        return dequantized_bits_per_dim(self.log_likelihood, x, dequantize_generator, dtype)
