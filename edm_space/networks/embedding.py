"""Noise-level and class-label embeddings shared by the networks."""

from __future__ import annotations

import math
from typing import Optional

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


class LabelEmbedding(nn.Linear):
    """One-hot class labels [batch, label_dim] -> [batch, dim]: a linear layer WITH bias.

    Class k embeds as W[:, k] + b. The null label, an all-zero row (or `labels=None`,
    read as all-zero rows), embeds as b, a weight trained like any other: the learned
    unconditional embedding that classifier-free guidance needs (Ho & Salimans 2022;
    DiT's extra "null" class row, Peebles & Xie 2023).
    """

    def __init__(self, label_dim: int, dim: int):
        super().__init__(label_dim, dim, bias=True)

    def forward(self, labels: Optional[torch.Tensor], batch: int) -> torch.Tensor:  # type: ignore[override]
        if labels is None:
            labels = self.weight.new_zeros(batch, self.in_features)
        return super().forward(labels.to(self.weight.dtype))


class SinusoidalNoiseEmbedding(nn.Module):
    """DiT's timestep embedding: 256 sinusoidal features [cos, sin] of `scale` c_noise, then Linear, SiLU, Linear.

    Frequencies omega_i = 10000^(-i / (128 - 1)), i = 0..127 (Vaswani et al. 2017's positional encoding as
    DiT, Peebles & Xie 2023, and diffusers' Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=1) use it).
    `scale` maps this project's c_noise to the timestep such a model is fed (1000 for flow's t in [0, 1]).
    """

    channels = 256

    def __init__(self, dim: int, scale: float = 1.0):
        super().__init__()
        half = self.channels // 2
        self.register_buffer("freqs", torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / (half - 1)), persistent=False)
        self.scale = scale
        self.mlp = nn.Sequential(nn.Linear(self.channels, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        angles = (self.scale * c_noise.reshape(-1, 1)).float() * self.freqs
        return self.mlp(torch.cat([angles.cos(), angles.sin()], dim=1).to(self.mlp[0].weight.dtype))
