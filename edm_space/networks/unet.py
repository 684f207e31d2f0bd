"""A small U-Net for images in the style of DDPM++ / SongUNet (Song et al. 2021; EDM's networks.py).

Residual blocks with group norm and the noise embedding injected in every block,
self-attention at the lowest resolution, skip connections between the encoder
and decoder, and a zero-initialized output so that F starts at 0.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .embedding import LabelEmbedding, NoiseEmbedding
from ..registry import Option


def _groups(channels: int) -> int:
    return math.gcd(channels, 32) if channels >= 8 else 1


class ResBlock(nn.Module):
    """GN -> SiLU -> conv, + embedding (scale and shift), GN -> SiLU -> dropout -> conv, residual / sqrt(2)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0, attention: bool = False):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.attention = SelfAttention(out_ch) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        h = self.conv2(self.dropout(h))
        h = (h + self.skip(x)) / math.sqrt(2)
        if self.attention is not None:
            h = self.attention(h)
        return h


class SelfAttention(nn.Module):
    """Single-head self-attention over pixels, residual / sqrt(2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return (x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))) / math.sqrt(2)


class UNet(nn.Module):
    """U-Net F(c_in x_hat, c_noise[, label]) for images [C, H, W]; H and W must divide by 2^(levels - 1)."""

    # Bounds of the options (edm_space.registry), checked before the network is built.
    OPTIONS = {"channels": Option.integer(1, 1 << 14), "channel_mult": Option.integers(1, 64), "blocks_per_level": Option.integer(1, 64),
               "emb_dim": Option.integer(1, 1 << 16, optional=True), "dropout": Option.number(0.0, 1.0, open_high=True),
               "label_dim": Option.integer(0, 1 << 20)}

    def __init__(
        self,
        item_shape: Sequence[int],
        channels: int = 32,
        channel_mult: Sequence[int] = (1, 2),
        blocks_per_level: int = 2,
        emb_dim: Optional[int] = None,
        dropout: float = 0.0,
        label_dim: int = 0,
    ):
        super().__init__()
        self.item_shape = tuple(item_shape)
        in_ch, height, width = self.item_shape
        levels = len(channel_mult)
        if height % 2 ** (levels - 1) or width % 2 ** (levels - 1):
            raise ValueError(f"image size {height}x{width} must divide by 2^{levels - 1} for {levels} U-Net levels")
        emb_dim = emb_dim or 4 * channels
        self.label_dim = label_dim
        self.embed = NoiseEmbedding(emb_dim)
        self.label = LabelEmbedding(label_dim, emb_dim) if label_dim else None
        self.inp = nn.Conv2d(in_ch, channels, 3, padding=1)

        self.down = nn.ModuleList()
        skip_channels = [channels]
        ch = channels
        for level, mult in enumerate(channel_mult):
            lowest = level == levels - 1
            for _ in range(blocks_per_level):
                self.down.append(ResBlock(ch, channels * mult, emb_dim, dropout, attention=lowest))
                ch = channels * mult
                skip_channels.append(ch)
            if not lowest:
                self.down.append(nn.AvgPool2d(2))
                skip_channels.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout, attention=True), ResBlock(ch, ch, emb_dim, dropout)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(blocks_per_level + 1):
                self.up.append(ResBlock(ch + skip_channels.pop(), channels * mult, emb_dim, dropout, attention=level == levels - 1))
                ch = channels * mult
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.out_norm = nn.GroupNorm(_groups(ch), ch)
        self.out = nn.Conv2d(ch, in_ch, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        emb = self.embed(c_noise)
        if self.label is not None:  # labels=None is the null label: the learned bias alone
            emb = emb + self.label(labels, emb.shape[0])
        h = self.inp(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.out(F.silu(self.out_norm(h)))
