"""The convolutional encoder and decoder shared by the KL and VQ autoencoders, and their base class.

The encoder maps an image [C, H, W] to a feature map [out_channels, H/f, W/f]
with f = `downsample` in {1, 2, 4}: each factor of 2 is one stride-2 4x4
convolution (28x28 -> 14x14 -> 7x7; 8x8 -> 4x4 -> 2x2). The decoder mirrors it
with stride-2 4x4 transposed convolutions. Between resampling steps sit residual
blocks (group norm, SiLU, 3x3 convolution), as in the autoencoders of latent
diffusion (Rombach et al. 2022, Appendix G) at a much smaller width.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from ..networks.unet import group_norm
from ..registry import Option
from .base import Autoencoder

#: The spatial reduction factors an autoencoder supports.
DOWNSAMPLE_FACTORS = (1, 2, 4)


def latent_grid(item_shape: Sequence[int], downsample: int) -> Tuple[int, int]:
    """The latent height and width of images `item_shape` = [C, H, W] reduced by `downsample`.

    Raises:
        ConfigError: items that are not images, a factor outside {1, 2, 4}, or an
        image whose height or width the factor does not divide.
    """
    if len(item_shape) != 3:
        raise ConfigError(f"the autoencoders need image items [C, H, W]; these items have shape {list(item_shape)}")
    if downsample not in DOWNSAMPLE_FACTORS:
        raise ConfigError(f"downsample {downsample!r} is not supported; valid: {', '.join(map(str, DOWNSAMPLE_FACTORS))}")
    _, height, width = item_shape
    if height % downsample or width % downsample:
        raise ConfigError(f"downsample {downsample} does not divide the image size {height}x{width}")
    return height // downsample, width // downsample


# Bounds of the options every convolutional autoencoder shares (edm_space.registry); downsample is
# checked by latent_grid, which names the factors that fit the image.
CONV_OPTIONS = {"latent_channels": Option.integer(1, 1 << 12), "downsample": Option.integer(1, 1 << 10),
                "channels": Option.integer(1, 1 << 14), "blocks": Option.integer(0, 64)}


class ResidualBlock(nn.Module):
    """x + conv(SiLU(GN(conv(SiLU(GN(x)))))), scaled by 1/sqrt(2) to keep the variance."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = group_norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = group_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x + h) / math.sqrt(2)


class ConvStack(nn.Module):
    """in conv, then residual blocks around each resampling step, then GN, SiLU, out conv: the shape of both halves.

    `resample()` makes one resampling layer (width `channels`); there are log2(factor) of them.
    """

    def __init__(self, in_channels: int, out_channels: int, channels: int, factor: int, blocks: int, resample: Callable[[], nn.Module]):
        super().__init__()
        layers = [nn.Conv2d(in_channels, channels, 3, padding=1)]
        layers += [ResidualBlock(channels) for _ in range(blocks)]
        for _ in range(int(math.log2(factor))):
            layers.append(resample())
            layers += [ResidualBlock(channels) for _ in range(blocks)]
        layers += [group_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ConvEncoder(ConvStack):
    """Image [in_channels, H, W] -> features [out_channels, H/downsample, W/downsample] (stride-2 4x4 convolutions)."""

    def __init__(self, in_channels: int, out_channels: int, channels: int = 32, downsample: int = 2, blocks: int = 1):
        super().__init__(in_channels, out_channels, channels, downsample, blocks, lambda: nn.Conv2d(channels, channels, 4, stride=2, padding=1))


class ConvDecoder(ConvStack):
    """Latents [in_channels, h, w] -> image [out_channels, h * upsample, w * upsample] (stride-2 4x4 transposed convolutions)."""

    def __init__(self, in_channels: int, out_channels: int, channels: int = 32, upsample: int = 2, blocks: int = 1):
        super().__init__(in_channels, out_channels, channels, upsample, blocks, lambda: nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1))


class ConvAutoencoder(Autoencoder):
    """An autoencoder of a ConvEncoder and a ConvDecoder: the options every convolutional autoencoder takes.

    Args:
        item_shape: image shape [C, H, W].
        latent_channels: channels of the latent map (e.g. 2, 4 or 8).
        downsample: spatial reduction 1, 2 or 4 (28x28 -> 7x7 with 4).
        channels: width of the convolutional encoder and decoder.
        blocks: residual blocks per resolution.

    A subclass takes its own options as keywords and these as `**conv_options` (see
    registry.forwards_options); `encoder_maps` is how many latent-shaped maps its encoder outputs.
    """

    encoder_maps = 1
    OPTIONS = CONV_OPTIONS

    def __init__(self, item_shape: Sequence[int], latent_channels: int = 4, downsample: int = 2, channels: int = 32, blocks: int = 1):
        super().__init__()
        height, width = latent_grid(item_shape, downsample)
        if latent_channels < 1:
            raise ConfigError(f"latent_channels must be an integer >= 1, got {latent_channels!r}")
        self.item_shape = tuple(int(s) for s in item_shape)
        self.latent_shape = (int(latent_channels), height, width)
        self.encoder: nn.Module = ConvEncoder(self.item_shape[0], self.encoder_maps * latent_channels, channels, downsample, blocks)
        self.decoder: nn.Module = ConvDecoder(latent_channels, self.item_shape[0], channels, downsample, blocks)

