"""Bits per dimension of 8-bit data in [-1, 1], for discrete and continuous models alike.

The data are integers k in 0..255 shown to the models as x = k / 127.5 - 1.

A discrete model (PixelCNN's 256-way softmax) gives a probability P(k) directly:

    bpd = -log P(k) / (D ln 2).

A continuous density p over [-1, 1]^D is scored on uniformly dequantized data
(Uria et al. 2013; Theis et al. 2016, "A note on the evaluation of
generative models"):

    u ~ U[0, 1)^D,   y = scale * (k + u) - 1,   scale = 2 / 256 = 1 / 128,

i.e. (k + u) / 256 in [0, 1) mapped affinely onto [-1, 1). The density of k + u
in [0, 256) units is p(y) * scale^D (change of variables), and because its unit
cells [k, k + 1) have volume 1, its negative log is an upper bound (in
expectation over u) on the code length of k by Jensen's inequality. So

    bpd = -(log p(y) + D log scale) / (D ln 2) = -log2 p(y) / D + log2(128),

a 7-bit offset for data in [-1, 1] (it is 8 bits for data in [0, 1], scale 1/256).
Both cases are one formula: the discrete one is scale = 1 (unit cells). A
density uniform on [-1, 1]^D (log p = -D log 2) scores 1 + 7 = 8 bits, exactly
the 8 bits of a uniform P over the 256 levels.

Data with L levels other than 256 (the 17 gray levels of scikit-learn's digits) use the same
convention with L cells of width 2 / L (`num_levels`): an offset of log2(L / 2) bits. Every
likelihood of the project, metrics.log_likelihood's included, dequantizes through these helpers.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..errors import ConfigError
from .base import draw_uniform

Tensor = torch.Tensor

LEVELS = 256
# Width of one dequantization cell in [-1, 1] units: [0, 256) is mapped onto [-1, 1).
DEQUANTIZED_SCALE = 2.0 / LEVELS
# Tolerance on floats said to be in [-1, 1] before they are rounded to levels.
_RANGE_SLACK = 1e-3


def to_levels(x: Tensor, num_levels: int = LEVELS) -> Tensor:
    """Levels (int64, 0..L-1) of uint8 pixels or of floats in [-1, 1] (k = round((x + 1) (L - 1) / 2)); L = 256 by default."""
    if x.dtype == torch.uint8:
        return x.to(torch.int64)
    if not x.is_floating_point():
        if x.numel() and (int(x.min()) < 0 or int(x.max()) > num_levels - 1):
            raise ConfigError(f"integer pixels must lie in 0..{num_levels - 1}; got values in [{int(x.min())}, {int(x.max())}]")
        return x.to(torch.int64)
    if x.numel() and (float(x.min()) < -1 - _RANGE_SLACK or float(x.max()) > 1 + _RANGE_SLACK):
        raise ConfigError(f"float pixels must lie in [-1, 1]; got values in [{float(x.min()):.4g}, {float(x.max()):.4g}]")
    return torch.round((x.double() + 1.0) * (num_levels - 1) / 2.0).clamp(0, num_levels - 1).to(torch.int64)


def levels_to_unit(levels: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """The data value x = k / 127.5 - 1 in [-1, 1] of 8-bit levels k."""
    return levels.to(dtype) * (2.0 / (LEVELS - 1)) - 1.0


def dequantize(levels: Tensor, generator: torch.Generator, dtype: torch.dtype = torch.float32, num_levels: int = LEVELS) -> Tensor:
    """y = scale * (k + u) - 1, scale = 2 / L, u ~ U[0, 1) from `generator`: a point of level k's cell in [-1, 1)."""
    u = draw_uniform(levels.shape, generator, levels.device, torch.float64)
    return ((2.0 / num_levels) * (levels.to(torch.float64) + u) - 1.0).to(dtype)


def bits_per_dim(log_prob: Tensor, dims: int, scale: float = 1.0) -> Tensor:
    """-(log p + D log scale) / (D ln 2): per-item bits per dimension of a log-probability in nats.

    `scale` is the width of one 8-bit cell in the model's units: 1 for a discrete
    model over the levels, DEQUANTIZED_SCALE for a density over [-1, 1]^D. The
    offset is taken as -log2(scale) so that it is exactly 7 for DEQUANTIZED_SCALE.
    """
    return -log_prob / (dims * math.log(2.0)) - math.log2(scale)


def dequantized_bits_per_dim(log_density: Callable[[Tensor], Tensor], x: Tensor, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Tensor:
    """Bits per dimension of a continuous density over [-1, 1]^D on uniformly dequantized 8-bit data `x`."""
    y = dequantize(to_levels(x), generator, dtype)
    dims = math.prod(x.shape[1:])
    return bits_per_dim(log_density(y), dims, DEQUANTIZED_SCALE)
