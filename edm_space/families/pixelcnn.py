"""PixelCNN (van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural Networks", Sec. 3).

An autoregressive model of 1-channel 8-bit images in raster order:

    P(k) = prod_i P(k_i | k_1 .. k_{i-1}),

each conditional a 256-way softmax over the pixel's level k_i in 0..255 (the
paper's discrete output; no dequantization). Data in [-1, 1] are quantized to
levels by k = round((x + 1) * 127.5): MNIST's pixels map back exactly, and the 17
gray levels of scikit-learn's 8x8 digits land on 17 of the 256 levels.

Masked convolutions make output i see only pixels before i: the first 7x7
convolution uses mask A (the centre excluded), every later spatial convolution
mask B (the centre included, carrying features computed from earlier pixels
only). Between them sit residual blocks (1x1 halving the channels, masked 3x3,
1x1 restoring them), then ReLU / 1x1 convolutions to 256 logits per pixel.

Likelihood is one network call; sampling draws pixel by pixel, H * W calls.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from .base import GenerativeFamily, draw_uniform, optimize
from .bits import LEVELS, bits_per_dim, levels_to_unit, to_levels
from ..registry import Option

Tensor = torch.Tensor


class MaskedConv2d(nn.Conv2d):
    """A same-padded square convolution whose kernel sees only the rows above and the columns left of the centre.

    Mask "A" also hides the centre (the first layer: output i must not see input i);
    mask "B" shows it (later layers: feature i already depends only on pixels < i).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask_type: str):
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B'; got {mask_type!r}")
        if kernel_size % 2 == 0:
            raise ValueError(f"masked convolutions need an odd kernel size; got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        centre = kernel_size // 2
        mask = torch.ones(kernel_size, kernel_size)
        mask[centre, centre + (1 if mask_type == "B" else 0):] = 0.0
        mask[centre + 1:, :] = 0.0
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding)


class ResidualBlock(nn.Module):
    """h + (ReLU, 1x1 to h/2, ReLU, masked 3x3 B, ReLU, 1x1 back to h) of h: the paper's PixelCNN residual block."""

    def __init__(self, channels: int):
        super().__init__()
        half = max(channels // 2, 1)
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, half, 1),
            nn.ReLU(),
            MaskedConv2d(half, half, 3, "B"),
            nn.ReLU(),
            nn.Conv2d(half, channels, 1),
        )

    def forward(self, h: Tensor) -> Tensor:
        return h + self.body(h)


class PixelCNN(GenerativeFamily):
    """PixelCNN over 256 levels for 1-channel images [1, H, W].

    Options: channels (feature maps; the paper uses 2h = 256 on larger data),
    blocks (residual blocks of masked 3x3 convolutions), head (channels of the
    1x1 output layers).
    """

    # Bounds of the options (edm_space.registry), checked before the family is built.
    OPTIONS = {"channels": Option.integer(1, 1 << 14), "blocks": Option.integer(0, 1024), "head": Option.integer(1, 1 << 14)}

    def __init__(self, item_shape: Sequence[int], channels: int = 64, blocks: int = 5, head: int = 128):
        super().__init__()
        self.item_shape = tuple(int(s) for s in item_shape)
        if len(self.item_shape) != 3 or self.item_shape[0] != 1:
            raise ConfigError(f"the PixelCNN models 1-channel images [1, H, W]; items have shape {list(self.item_shape)}")
        self.dim = math.prod(self.item_shape)
        self.stem = MaskedConv2d(1, channels, 7, "A")
        self.blocks = nn.Sequential(*(ResidualBlock(channels) for _ in range(blocks)))
        self.hidden = nn.Conv2d(channels, head, 1)
        self.output = nn.Conv2d(head, LEVELS, 1)
        # Sampling calls the network once per pixel.
        self.evaluations_per_sample = self.item_shape[1] * self.item_shape[2]

    def optimizer_groups(self) -> Dict[str, List[nn.Parameter]]:
        return {"model": list(self.parameters())}

    def network(self, x: Tensor) -> Tensor:
        """Logits [B, 256, H, W] of every pixel's conditional from images x [B, 1, H, W] in [-1, 1]."""
        return self.head(self.blocks(self.stem(x)))

    def head(self, h: Tensor) -> Tensor:
        """The 1x1 output layers: features [B, C, H, W] to logits [B, 256, H, W], pixel by pixel."""
        return self.output(F.relu(self.hidden(F.relu(h))))

    def logits(self, levels: Tensor) -> Tensor:
        """The network on 8-bit levels [B, 1, H, W] (teacher forcing: every conditional in one call)."""
        _, dtype = self.parameter_device_dtype()
        return self.network(levels_to_unit(levels, dtype))

    def log_likelihood(self, x: Tensor) -> Tensor:
        """log P(k) in nats per item: the sum over pixels of the categorical log-probabilities of their levels."""
        levels = to_levels(x)
        log_probs = F.log_softmax(self.logits(levels), dim=1)
        return log_probs.gather(1, levels).sum(dim=(1, 2, 3))

    def train_step(self, x: Tensor, optimizers: Dict[str, torch.optim.Optimizer], generator: torch.Generator) -> Dict[str, float]:
        """One maximum-likelihood step (the generator is unused: the objective is deterministic)."""
        log_likelihood = self.log_likelihood(x)
        nll = optimize(optimizers["model"], -log_likelihood.mean())
        return {"nll": nll, "bits_per_dim": float(bits_per_dim(log_likelihood.detach(), self.dim).mean())}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """Draw pixels one at a time in raster order, each from its softmax given the pixels drawn so far."""
        device, dtype = self.parameter_device_dtype()
        _, height, width = self.item_shape
        levels = torch.zeros((n, *self.item_shape), dtype=torch.int64, device=device)
        for row in range(height):
            for column in range(width):
                # Rows below `row` cannot reach it (every mask hides the rows under its centre and the
                # zero padding stands in for them), so the network runs on rows 0..row only: exact, and
                # about half the work of whole images.
                # The 1x1 head acts on each pixel alone, so it runs on the one pixel being drawn.
                features = self.blocks(self.stem(levels_to_unit(levels[:, :, : row + 1], dtype)))
                logits = self.head(features[:, :, row : row + 1, column : column + 1])[:, :, 0, 0]
                probs = F.softmax(logits.double(), dim=1)
                levels[:, 0, row, column] = categorical(probs, generator)
        return levels_to_unit(levels, self.parameter_device_dtype()[1])

    def bits_per_dim(self, x: Tensor, dequantize_generator: torch.Generator) -> Tensor:
        """-log2 P(k) / D: a discrete model needs no dequantization (the generator is unused)."""
        return bits_per_dim(self.log_likelihood(x), self.dim)


def categorical(probs: Tensor, generator: torch.Generator) -> Tensor:
    """One draw per row of a [B, K] probability table, by inverting each row's CDF at u ~ U[0, 1)."""
    u = draw_uniform((probs.shape[0], 1), generator, probs.device, probs.dtype)
    cdf = probs.cumsum(dim=1)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp(max=probs.shape[1] - 1).squeeze(1)
