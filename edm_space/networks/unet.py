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

from .embedding import NOISE_MAX_FREQ_OPTION, LabelEmbedding, NoiseEmbedding, conditioning, zero_init
from ..registry import Option


def group_norm(channels: int, min_channels_per_group: int = 1) -> nn.GroupNorm:
    """GroupNorm with gcd(channels, 32) groups (one group below 8 channels), merged until each group has at
    least `min_channels_per_group` channels. With one channel per group GroupNorm is instance norm: it removes
    every channel's spatial mean, so the image's mean level cannot pass through; EDM's networks keep at least 4
    channels per group (`min_channels_per_group=4` in NVlabs/edm's GroupNorm)."""
    groups = math.gcd(channels, 32) if channels >= 8 else 1
    while groups > 1 and channels // groups < min_channels_per_group:
        groups = max(d for d in range(1, groups) if groups % d == 0)
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """GN -> SiLU -> conv, + embedding (scale and shift), GN -> SiLU -> dropout -> conv, residual / sqrt(2)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0, attention: bool = False,
                 group_channels: int = 1):
        super().__init__()
        self.norm1 = group_norm(in_ch, group_channels)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = group_norm(out_ch, group_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.attention = SelfAttention(out_ch, group_channels) if attention else None

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

    def __init__(self, channels: int, group_channels: int = 1):
        super().__init__()
        self.norm = group_norm(channels, group_channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return (x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))) / math.sqrt(2)


class UNet(nn.Module):
    """U-Net F(c_in x_hat, c_noise[, label]) for images [C, H, W]; H and W must divide by 2^(levels - 1)."""

    #: networks.recorded_defaults: new runs keep at least 4 channels per group norm group (as EDM's networks);
    #: runs trained before this option existed had one per group at 32 channels or fewer (instance norm).
    RECORDED_DEFAULTS = {"min_channels_per_group": (4, 1)}
    # Bounds of the options (edm_space.registry), checked before the network is built.
    OPTIONS = {"channels": Option.integer(1, 1 << 14), "channel_mult": Option.integers(1, 64), "blocks_per_level": Option.integer(1, 64),
               "emb_dim": Option.integer(1, 1 << 16, optional=True), "dropout": Option.number(0.0, 1.0, open_high=True),
               "label_dim": Option.integer(0, 1 << 20), "noise_max_freq": NOISE_MAX_FREQ_OPTION,
               "min_channels_per_group": Option.integer(1, 1 << 14)}

    def __init__(
        self,
        item_shape: Sequence[int],
        channels: int = 32,
        channel_mult: Sequence[int] = (1, 2),
        blocks_per_level: int = 2,
        emb_dim: Optional[int] = None,
        dropout: float = 0.0,
        label_dim: int = 0,
        noise_max_freq: float = NoiseEmbedding.MAX_FREQ,
        min_channels_per_group: int = 4,
    ):
        super().__init__()
        self.item_shape = tuple(item_shape)
        in_ch, height, width = self.item_shape
        levels = len(channel_mult)
        if height % 2 ** (levels - 1) or width % 2 ** (levels - 1):
            raise ValueError(f"image size {height}x{width} must divide by 2^{levels - 1} for {levels} U-Net levels")
        emb_dim = emb_dim or 4 * channels
        self.label_dim = label_dim
        self.embed = NoiseEmbedding(emb_dim, max_freq=noise_max_freq)
        self.label = LabelEmbedding(label_dim, emb_dim) if label_dim else None
        self.inp = nn.Conv2d(in_ch, channels, 3, padding=1)

        self.down = nn.ModuleList()
        skip_channels = [channels]
        ch = channels
        for level, mult in enumerate(channel_mult):
            lowest = level == levels - 1
            for _ in range(blocks_per_level):
                self.down.append(ResBlock(ch, channels * mult, emb_dim, dropout, lowest, min_channels_per_group))
                ch = channels * mult
                skip_channels.append(ch)
            if not lowest:
                self.down.append(nn.AvgPool2d(2))
                skip_channels.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout, True, min_channels_per_group),
                                  ResBlock(ch, ch, emb_dim, dropout, False, min_channels_per_group)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(blocks_per_level + 1):
                self.up.append(ResBlock(ch + skip_channels.pop(), channels * mult, emb_dim, dropout, level == levels - 1,
                                        min_channels_per_group))
                ch = channels * mult
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.out_norm = group_norm(ch, min_channels_per_group)
        self.out = nn.Conv2d(ch, in_ch, 3, padding=1)
        zero_init(self.out)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        emb = conditioning(self.embed, self.label, c_noise, labels)
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
