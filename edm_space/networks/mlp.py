"""A residual MLP for vector data: F(c_in x_hat, c_noise[, label])."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from .embedding import NOISE_MAX_FREQ_OPTION, LabelEmbedding, NoiseEmbedding, conditioning, zero_init
from ..registry import Option


class ResidualBlock(nn.Module):
    """LayerNorm -> SiLU -> Linear with the noise embedding added -> SiLU -> Linear, plus the input."""

    def __init__(self, width: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        out = self.fc1(nn.functional.silu(self.norm(h))) + self.emb(emb)
        return (h + self.fc2(nn.functional.silu(out))) / math.sqrt(2)


class MLP(nn.Module):
    """Residual MLP over flattened items of shape `item_shape`; knows nothing about formulations."""

    # Bounds of the options (edm_space.registry), checked before the network is built.
    OPTIONS = {"width": Option.integer(1, 1 << 16), "depth": Option.integer(1, 1024), "emb_dim": Option.integer(1, 1 << 16),
               "label_dim": Option.integer(0, 1 << 20), "noise_max_freq": NOISE_MAX_FREQ_OPTION}

    def __init__(self, item_shape: Sequence[int], width: int = 256, depth: int = 4, emb_dim: int = 128, label_dim: int = 0,
                 noise_max_freq: float = NoiseEmbedding.MAX_FREQ):
        super().__init__()
        self.item_shape = tuple(item_shape)
        self.dim = math.prod(self.item_shape)
        self.label_dim = label_dim
        self.embed = NoiseEmbedding(emb_dim, max_freq=noise_max_freq)
        self.label = LabelEmbedding(label_dim, emb_dim) if label_dim else None
        self.inp = nn.Linear(self.dim, width)
        self.blocks = nn.ModuleList(ResidualBlock(width, emb_dim) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, self.dim)
        zero_init(self.out)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        emb = conditioning(self.embed, self.label, c_noise, labels)
        h = self.inp(x.reshape(x.shape[0], self.dim))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(nn.functional.silu(self.out_norm(h))).reshape(x.shape)
