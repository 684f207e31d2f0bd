"""Noise-level and class-label embeddings shared by the networks."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..registry import Option


class NoiseEmbedding(nn.Module):
    """sin/cos features of c_noise at geometrically spaced frequencies, then a two-layer MLP.

    The frequencies span [min_freq, max_freq] (radians per unit of c_noise), the positional
    embedding of Vaswani et al. 2017 / Ho et al. 2020 with a wider band. The default band
    suits c_noise of order one (EDM's ln(sigma)/4 near [-2, 1], flow's t in [0, 1]). For an
    index-like c_noise (VP's 999 t, DDPM's 0..999, EDM Table 1) its top frequencies alias: a
    0.1 % change of sigma at sigma = 50 turns them by about 12 radians, so D is rough in sigma
    and a short run learns noise there. With such presets use max_freq = 1, the top
    frequency of the positional embedding that EDM's DDPM++ feeds 999 t.
    """

    #: The default top frequency: kept, so that every run trained so far rebuilds the same network.
    MAX_FREQ = 100.0

    def __init__(self, dim: int, num_freqs: int = 32, min_freq: float = 1e-3, max_freq: float = MAX_FREQ):
        super().__init__()
        if not min_freq < max_freq:
            raise ValueError(f"noise embedding frequencies: min_freq {min_freq} must be below max_freq {max_freq}")
        freqs = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), num_freqs))
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * num_freqs, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        angles = c_noise.reshape(-1, 1).to(self.freqs.dtype) * self.freqs
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=1).to(self.mlp[0].weight.dtype))


#: The networks' option for NoiseEmbedding's top frequency (above its lowest, 1e-3).
NOISE_MAX_FREQ_OPTION = Option.number(1e-3, 1e6, open_low=True)


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


def conditioning(embed: nn.Module, label: Optional[LabelEmbedding], c_noise: torch.Tensor,
                 labels: Optional[torch.Tensor]) -> torch.Tensor:
    """The conditioning vector of a batch: the noise embedding, plus the label embedding when the network has
    one (labels=None is the null label: the label embedding's learned bias alone)."""
    emb = embed(c_noise)
    if label is not None:
        emb = emb + label(labels, emb.shape[0])
    return emb


def zero_init(layer: nn.Module) -> nn.Module:
    """`layer` with its weight and bias set to zero (an output layer that starts at F = 0), returned."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer
