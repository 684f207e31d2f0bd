"""A small GAN (Goodfellow et al. 2014): DCGAN-style convolutional pair for images, MLP pair for vectors.

The generator maps z ~ N(0, I) to an item through a final tanh, so samples lie
in [-1, 1]. The discriminator outputs one logit l(x) per item. Losses:

- "ns", non-saturating (Goodfellow et al. 2014, Sec. 3): the discriminator
  minimizes -log sigmoid(l(x)) - log(1 - sigmoid(l(G(z)))), the generator
  minimizes -log sigmoid(l(G(z))) instead of log(1 - sigmoid(l(G(z)))).
- "hinge" (Lim & Ye 2017; Miyato et al. 2018): the discriminator minimizes
  relu(1 - l(x)) + relu(1 + l(G(z))), the generator minimizes -l(G(z)).

Spectral normalization (Miyato et al. 2018) of every discriminator layer is an
option. A GAN has no likelihood: `log_likelihood` and `bits_per_dim` return None.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm as apply_spectral_norm

from ..errors import ConfigError, unknown
from .base import GenerativeFamily, draw_normal, optimize
from ..registry import Option

Tensor = torch.Tensor

LOSSES = ("ns", "hinge")


class ConvGenerator(nn.Module):
    """z -> [C, H, W]: a linear map to a (H/4, W/4) grid, two (nearest x2 upsample, 3x3 conv, BN, ReLU) stages, 3x3 conv, tanh."""

    def __init__(self, item_shape: Sequence[int], latent_dim: int, channels: int):
        super().__init__()
        self.item_shape = tuple(item_shape)
        out_channels, height, width = self.item_shape
        self.grid = (2 * channels, height // 4, width // 4)
        self.project = nn.Sequential(nn.Linear(latent_dim, math.prod(self.grid)), nn.BatchNorm1d(math.prod(self.grid)), nn.ReLU())
        self.body = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(2 * channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, out_channels, 3, padding=1),
            nn.Tanh(),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.body(self.project(z).reshape(z.shape[0], *self.grid))


class ConvDiscriminator(nn.Module):
    """[C, H, W] -> one logit: two 4x4 stride-2 convs with LeakyReLU(0.2) (DCGAN), then a linear layer.

    No batch norm here (unlike DCGAN), so the logit of an item depends on that item alone
    and spectral normalization bounds every layer.
    """

    def __init__(self, item_shape: Sequence[int], channels: int):
        super().__init__()
        in_channels, height, width = item_shape
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(2 * channels * (height // 4) * (width // 4), 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x).reshape(x.shape[0])


class MLPGenerator(nn.Module):
    """z -> [D]: `depth` (linear, ReLU) layers of `width` units, a linear layer, tanh."""

    def __init__(self, dim: int, latent_dim: int, width: int, depth: int):
        super().__init__()
        layers: List[nn.Module] = []
        size = latent_dim
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        self.body = nn.Sequential(*layers, nn.Linear(size, dim), nn.Tanh())

    def forward(self, z: Tensor) -> Tensor:
        return self.body(z)


class MLPDiscriminator(nn.Module):
    """[D] -> one logit: `depth` (linear, LeakyReLU(0.2)) layers of `width` units, a linear layer."""

    def __init__(self, dim: int, width: int, depth: int):
        super().__init__()
        layers: List[nn.Module] = []
        size = dim
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.LeakyReLU(0.2)]
            size = width
        self.body = nn.Sequential(*layers, nn.Linear(size, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x).reshape(x.shape[0])


class GAN(GenerativeFamily):
    """A generator/discriminator pair trained alternately, one discriminator step then one generator step per call.

    Options: latent_dim; channels (image pair); width and depth (vector pair);
    loss "ns" or "hinge"; spectral_norm on every discriminator layer.
    """

    # DCGAN's Adam beta1 = 0.5 (Radford et al. 2016, Sec. 4).
    adam_betas = (0.5, 0.999)

    # Bounds of the options (edm_space.registry), checked before the family is built.
    OPTIONS = {"latent_dim": Option.integer(1, 1 << 16), "channels": Option.integer(1, 1 << 14), "width": Option.integer(1, 1 << 16),
               "depth": Option.integer(1, 1024), "loss": Option.name(*LOSSES, label="GAN loss"), "spectral_norm": Option.flag()}

    def __init__(self, item_shape: Sequence[int], latent_dim: int = 64, channels: int = 64, width: int = 256, depth: int = 2, loss: str = "ns", spectral_norm: bool = False):
        super().__init__()
        self.item_shape = tuple(int(s) for s in item_shape)
        if loss not in LOSSES:
            raise unknown("GAN loss", loss, LOSSES)
        self.loss = loss
        self.latent_dim = int(latent_dim)
        if len(self.item_shape) == 3:
            if self.item_shape[1] % 4 or self.item_shape[2] % 4:
                raise ConfigError(f"the convolutional GAN needs image sides divisible by 4; items have shape {list(self.item_shape)}")
            self.generator_net: nn.Module = ConvGenerator(self.item_shape, self.latent_dim, channels)
            self.discriminator_net: nn.Module = ConvDiscriminator(self.item_shape, channels)
        elif len(self.item_shape) == 1:
            self.generator_net = MLPGenerator(self.item_shape[0], self.latent_dim, width, depth)
            self.discriminator_net = MLPDiscriminator(self.item_shape[0], width, depth)
        else:
            raise ConfigError(f"the GAN takes images [C, H, W] or vectors [D]; items have shape {list(self.item_shape)}")
        if spectral_norm:
            layers = [m for m in self.discriminator_net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
            for layer in layers:
                apply_spectral_norm(layer)
        self.evaluations_per_sample = 1

    def optimizer_groups(self) -> Dict[str, List[nn.Parameter]]:
        return {"generator": list(self.generator_net.parameters()), "discriminator": list(self.discriminator_net.parameters())}

    def latents(self, n: int, generator: torch.Generator) -> Tensor:
        """n latents z ~ N(0, I) of size latent_dim."""
        device, dtype = self.parameter_device_dtype()
        return draw_normal((n, self.latent_dim), generator, device, dtype)

    def discriminator_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        """The discriminator's mean loss on a real and a generated batch."""
        real_logit, fake_logit = self.discriminator_net(real), self.discriminator_net(fake)
        if self.loss == "hinge":
            return (F.relu(1.0 - real_logit) + F.relu(1.0 + fake_logit)).mean()
        # -log sigmoid(l) = softplus(-l); -log(1 - sigmoid(l)) = softplus(l).
        return (F.softplus(-real_logit) + F.softplus(fake_logit)).mean()

    def generator_loss(self, z: Tensor) -> Tensor:
        """The generator's mean loss on latents z, through the current discriminator."""
        fake_logit = self.discriminator_net(self.generator_net(z))
        if self.loss == "hinge":
            return -fake_logit.mean()
        return F.softplus(-fake_logit).mean()

    def discriminator_step(self, x: Tensor, z: Tensor, optimizer: torch.optim.Optimizer) -> float:
        """One discriminator update against G(z), the generator held fixed."""
        with torch.no_grad():
            fake = self.generator_net(z)
        return optimize(optimizer, self.discriminator_loss(x, fake))

    def generator_step(self, z: Tensor, optimizer: torch.optim.Optimizer) -> float:
        """One generator update through a frozen discriminator (no gradient reaches its parameters)."""
        parameters = list(self.discriminator_net.parameters())
        previous = [p.requires_grad for p in parameters]
        for p in parameters:
            p.requires_grad_(False)
        try:
            return optimize(optimizer, self.generator_loss(z))
        finally:
            for p, flag in zip(parameters, previous):
                p.requires_grad_(flag)

    def train_step(self, x: Tensor, optimizers: Dict[str, torch.optim.Optimizer], generator: torch.Generator) -> Dict[str, float]:
        _, dtype = self.parameter_device_dtype()
        x = x.to(dtype)
        discriminator = self.discriminator_step(x, self.latents(x.shape[0], generator), optimizers["discriminator"])
        generator_loss = self.generator_step(self.latents(x.shape[0], generator), optimizers["generator"])
        return {"discriminator": discriminator, "generator": generator_loss}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """G(z) for n fresh latents, with batch norm on its running statistics (eval mode)."""
        was_training = self.generator_net.training
        self.generator_net.eval()
        try:
            return self.generator_net(self.latents(n, generator))
        finally:
            self.generator_net.train(was_training)
