"""Noise-level embeddings shared by the networks."""

from __future__ import annotations

import math

import torch
from torch import nn


class NoiseEmbedding(nn.Module):
    """sin/cos features of c_noise at geometrically spaced frequencies, then a two-layer MLP.

    The frequencies span [min_freq, max_freq] so that every preset's c_noise range
    (ln(sigma)/4 near [-2, 1], flow's t in [0, 1], DDPM's index in [0, 999]) is
    resolved by some of them (the positional embedding of Vaswani et al. 2017 /
    Ho et al. 2020, with a wider band).
    """

    def __init__(self, dim: int, num_freqs: int = 32, min_freq: float = 1e-3, max_freq: float = 100.0):
        super().__init__()
        freqs = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), num_freqs))
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * num_freqs, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        angles = c_noise.reshape(-1, 1).to(self.freqs.dtype) * self.freqs
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=1).to(self.mlp[0].weight.dtype))
