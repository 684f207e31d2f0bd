"""A small GAN (Goodfellow et al. 2014): DCGAN-style convolutional pair for images, MLP pair for vectors.

The generator maps z ~ N(0, I) to an item through a final tanh, so samples lie
in [-1, 1]. The discriminator outputs one logit l(x) per item. Losses:

- "ns", non-saturating (Goodfellow et al. 2014, Sec. 3): the discriminator
  minimizes -log sigmoid(l(x)) - log(1 - sigmoid(l(G(z)))), the generator
  minimizes -log sigmoid(l(G(z))) instead of log(1 - sigmoid(l(G(z)))).
- "hinge" (Lim & Ye 2017; Miyato et al. 2018): the discriminator minimizes
  relu(1 - l(x)) + relu(1 + l(G(z))), the generator minimizes -l(G(z)).

Remedies against collapse, each an option (README, "Families"): spectral
normalization of every discriminator layer (Miyato et al. 2018); the R1 penalty
gamma/2 E_real |grad_x l(x)|^2 on the discriminator (Mescheder et al. 2018, eq. 9);
two time-scales, the discriminator's learning rate a multiple of the generator's
(TTUR, Heusel et al. 2017); and a minibatch standard-deviation feature before the
discriminator's last layer (Karras et al. 2018, "Progressive GANs", Sec. 3).
A GAN has no likelihood: `log_likelihood` and `bits_per_dim` return None.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm as apply_spectral_norm

from ..errors import ConfigError, unknown
from .base import GenerativeFamily, draw_normal, optimize
from ..registry import Option

Tensor = torch.Tensor

LOSSES = ("ns", "hinge")
MAX_R1 = 1e3
MAX_LR_RATIO = 100.0
MAX_STD_GROUP = 4096


def check_remedies(r1: float, lr_ratio: float, minibatch_std: int) -> None:
    """One-line errors for remedy options out of their bounds."""
    if isinstance(r1, bool) or not (isinstance(r1, (int, float)) and 0 <= r1 <= MAX_R1):
        raise ConfigError(f"GAN r1 = {r1!r} is invalid; it must be a number in [0, {MAX_R1:g}] (0: no R1 penalty)")
    if isinstance(lr_ratio, bool) or not (isinstance(lr_ratio, (int, float)) and 0 < lr_ratio <= MAX_LR_RATIO):
        raise ConfigError(f"GAN lr_ratio = {lr_ratio!r} is invalid; it must be a number in (0, {MAX_LR_RATIO:g}] (1: one learning rate)")
    if isinstance(minibatch_std, bool) or not (isinstance(minibatch_std, int) and 0 <= minibatch_std <= MAX_STD_GROUP) or minibatch_std == 1:
        raise ConfigError(f"GAN minibatch_std = {minibatch_std!r} is invalid; it must be 0 (off) or a group size in 2..{MAX_STD_GROUP}")


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


def minibatch_std(h: Tensor, group: int) -> Tensor:
    """h [B, F, ...] with one more feature: the standard deviation over each group of items, averaged (ProGAN, Sec. 3).

    The batch is cut into consecutive groups of gcd(group, B) items; for every feature (and position) the
    standard deviation over the group's items is sqrt(biased variance + 1e-8), and the mean of these over
    features and positions becomes the new feature, the same for every item of the group (and position).
    """
    size = math.gcd(group, h.shape[0])
    grouped = h.reshape(h.shape[0] // size, size, *h.shape[1:])
    std = (grouped.var(dim=1, unbiased=False) + 1e-8).sqrt().flatten(1).mean(dim=1)  # [B / size]
    feature = std.repeat_interleave(size).reshape(-1, 1, *[1] * (h.ndim - 2)).expand(-1, 1, *h.shape[2:])
    return torch.cat([h, feature.to(h.dtype)], dim=1)


class MinibatchStd(nn.Module):
    """The minibatch standard-deviation feature as a layer (`minibatch_std`); group 0 leaves h unchanged."""

    def __init__(self, group: int):
        super().__init__()
        self.group = group

    def forward(self, h: Tensor) -> Tensor:
        return minibatch_std(h, self.group) if self.group else h


class ConvDiscriminator(nn.Module):
    """[C, H, W] -> one logit: two 4x4 stride-2 convs with LeakyReLU(0.2) (DCGAN), then a linear layer.

    No batch norm here (unlike DCGAN), so the logit of an item depends on that item alone (unless the
    minibatch standard deviation is on) and spectral normalization bounds every layer.
    """

    def __init__(self, item_shape: Sequence[int], channels: int, std_group: int = 0):
        super().__init__()
        in_channels, height, width = item_shape
        extra = 1 if std_group else 0
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear((2 * channels + extra) * (height // 4) * (width // 4), 1),
        )
        self.std = MinibatchStd(std_group)  # between the convolutions and the flatten; no weights, so the keys stay

    def forward(self, x: Tensor) -> Tensor:
        return self.body[4:](self.std(self.body[:4](x))).reshape(x.shape[0])


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

    def __init__(self, dim: int, width: int, depth: int, std_group: int = 0):
        super().__init__()
        layers: List[nn.Module] = []
        size = dim
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.LeakyReLU(0.2)]
            size = width
        self.body = nn.Sequential(*layers, nn.Linear(size + (1 if std_group else 0), 1))
        self.std = MinibatchStd(std_group)  # before the last layer; no weights, so the keys stay

    def forward(self, x: Tensor) -> Tensor:
        return self.body[-1](self.std(self.body[:-1](x))).reshape(x.shape[0])


class GAN(GenerativeFamily):
    """A generator/discriminator pair trained alternately, one discriminator step then one generator step per call.

    Options: latent_dim; channels (image pair); width and depth (vector pair);
    loss "ns" or "hinge"; spectral_norm on every discriminator layer; r1, the R1 weight gamma
    (0: off); lr_ratio, the discriminator's learning rate over the generator's (TTUR; 1: one rate);
    minibatch_std, the group size of the minibatch standard-deviation feature (0: off).
    The defaults lr_ratio = 8 and r1 = 1 are the remedy pair that kept every class of the digits within 5-20 % of
    the samples on three seeds and lowered MNIST's FD by a fifth against lr_ratio = 8 alone (on MNIST at 600 CPU s one
    class of two seeds stays at 4.2-4.9 %, at 1,200 s every class is within 5-15 % by the digit classifier and one
    at 4.1 % by a logistic one; benchmarks/results/gan_remedies_r1*/); the others are off by default.
    """

    #: Registry.recorded_defaults: new runs record r1 = 1; a run that does not record r1 trained without R1.
    RECORDED_DEFAULTS = {"r1": (1.0, 0.0)}

    # DCGAN's Adam beta1 = 0.5 (Radford et al. 2016, Sec. 4).
    adam_betas = (0.5, 0.999)

    # Bounds of the options (edm_space.registry), checked before the family is built (minibatch_std = 1 by check_remedies).
    OPTIONS = {"latent_dim": Option.integer(1, 1 << 16), "channels": Option.integer(1, 1 << 14), "width": Option.integer(1, 1 << 16),
               "depth": Option.integer(1, 1024), "loss": Option.name(*LOSSES, label="GAN loss"), "spectral_norm": Option.flag(),
               "r1": Option.number(0.0, MAX_R1), "lr_ratio": Option.number(0.0, MAX_LR_RATIO, open_low=True),
               "minibatch_std": Option.integer(0, MAX_STD_GROUP)}

    def __init__(self, item_shape: Sequence[int], latent_dim: int = 64, channels: int = 64, width: int = 256, depth: int = 2,
                 loss: str = "ns", spectral_norm: bool = False, r1: float = 1.0, lr_ratio: float = 8.0, minibatch_std: int = 0):
        super().__init__()
        self.item_shape = tuple(int(s) for s in item_shape)
        if loss not in LOSSES:
            raise unknown("GAN loss", loss, LOSSES)
        check_remedies(r1, lr_ratio, minibatch_std)
        self.loss, self.r1, self.lr_ratio = loss, float(r1), float(lr_ratio)
        self.latent_dim = int(latent_dim)
        if len(self.item_shape) == 3:
            if self.item_shape[1] % 4 or self.item_shape[2] % 4:
                raise ConfigError(f"the convolutional GAN needs image sides divisible by 4; items have shape {list(self.item_shape)}")
            self.generator_net: nn.Module = ConvGenerator(self.item_shape, self.latent_dim, channels)
            self.discriminator_net: nn.Module = ConvDiscriminator(self.item_shape, channels, int(minibatch_std))
        elif len(self.item_shape) == 1:
            self.generator_net = MLPGenerator(self.item_shape[0], self.latent_dim, width, depth)
            self.discriminator_net = MLPDiscriminator(self.item_shape[0], width, depth, int(minibatch_std))
        else:
            raise ConfigError(f"the GAN takes images [C, H, W] or vectors [D]; items have shape {list(self.item_shape)}")
        if spectral_norm:
            layers = [m for m in self.discriminator_net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
            for layer in layers:
                apply_spectral_norm(layer)
        self.evaluations_per_sample = 1

    def split_refusal(self, batch: int, parts: int) -> Optional[str]:
        """The convolutional generator's batch norm normalizes by the whole batch's statistics; the minibatch
        standard deviation reads groups of gcd(group, batch) consecutive items, which must not straddle processes."""
        if isinstance(self.generator_net, ConvGenerator):
            return "its convolutional generator's batch norm normalizes by statistics of the whole batch"
        group = self.discriminator_net.std.group
        size = math.gcd(group, batch) if group else 1
        if (batch // parts) % size:
            return f"its minibatch_std groups of {size} items would straddle processes; give a batch of {parts} times a multiple of {size}"
        return None

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

    def r1_penalty(self, real: Tensor) -> Tensor:
        """gamma/2 times the mean over real items of |grad_x l(x)|^2 (Mescheder et al. 2018, eq. 9), differentiable
        in the discriminator's weights (double backpropagation)."""
        real = real.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.discriminator_net(real).sum(), real, create_graph=True)
        return 0.5 * self.r1 * grad.pow(2).flatten(1).sum(dim=1).mean()

    def discriminator_step(self, x: Tensor, z: Tensor, optimizer: torch.optim.Optimizer) -> float:
        """One discriminator update against G(z), the generator held fixed; the R1 penalty added when r1 > 0.

        With lr_ratio != 1 the optimizer's learning rate is set to lr_ratio times the rate it was built with
        (kept in the group as "generator_lr", so that a resumed run goes on with the same rates).
        """
        if self.lr_ratio != 1.0:
            for group in optimizer.param_groups:
                group["lr"] = group.setdefault("generator_lr", group["lr"]) * self.lr_ratio
        with torch.no_grad():
            fake = self.generator_net(z)
        loss = self.discriminator_loss(x, fake)
        if self.r1 > 0:
            loss = loss + self.r1_penalty(x)
        return optimize(optimizer, loss)

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
