"""The KL autoencoder as a generative family: a VAE sampled from its prior (Kingma & Welling 2014).

    vae = families.build("vae", item_shape=(1, 28, 28), latent_channels=4, downsample=4)
    losses = vae.train_step(x, optimizers, generator)   # total, reconstruction, kl
    images = vae.sample(16, generator)                  # decode(z), z ~ N(0, I), clamped to [-1, 1]
    bpd = vae.bits_per_dim(x, generator)                # from the IWAE lower bound on log p(x)

The model is `autoencoders.kl.KLAutoencoder` (its attribute `autoencoder`); this
class only puts it behind the families' interface. Its likelihood is the IWAE
bound (Burda et al. 2016, eq. 8) with `iwae_samples` posterior draws, a lower
bound on log p(x), so `bits_per_dim` is an upper bound on the model's own.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import nn

from ..autoencoders.kl import KLAutoencoder
from ..errors import ConfigError
from ..registry import Option, forwards_options
from ..seeding import generator_like
from .base import GenerativeFamily, draw_normal, optimize
from .bits import dequantized_bits_per_dim

Tensor = torch.Tensor

# Seed of the posterior draws of `log_likelihood`, which takes no generator: the bound is a fixed function of x.
LIKELIHOOD_SEED = 0


def generator_on(device: torch.device, generator: torch.Generator) -> torch.Generator:
    """`generator` itself when it lives on `device`, else a generator there seeded by one draw from it.

    The autoencoders draw their noise on their tensors' device with the generator they get, so a
    model on a GPU needs a GPU generator; this keeps every draw a function of the given generator.
    """
    device = torch.device(device)
    if generator.device.type == device.type:
        return generator
    seed = int(torch.randint(1 << 62, (1,), generator=generator, device=generator.device))
    return generator_like(generator, device, seed)


def prior_samples(autoencoder: KLAutoencoder, n: int, generator: torch.Generator) -> Tensor:
    """decode(z) for n latents z ~ N(0, I) drawn on the generator's device, clamped to the data range [-1, 1]."""
    reference = next(autoencoder.parameters())
    z = draw_normal((n, *autoencoder.latent_shape), generator, reference.device, reference.dtype)
    return autoencoder.decode(z).clamp(-1.0, 1.0)


@forwards_options(KLAutoencoder)
class VAE(GenerativeFamily):
    """A KL autoencoder trained on its loss and sampled by decoding prior draws.

    Options are those of KLAutoencoder (latent_channels, downsample, channels, blocks,
    beta, decoder_std), passed on to it, and iwae_samples, the posterior draws of the likelihood bound.
    The default beta = 2 decoder_std^2 makes the training loss the negative ELBO,
    rescaled (see autoencoders.kl), i.e. maximum-likelihood training of the VAE.
    """

    # Bounds of the options (edm_space.registry): the KL autoencoder's, and the IWAE bound's posterior draws.
    OPTIONS = {**KLAutoencoder.OPTIONS, "iwae_samples": Option.integer(1, 10_000)}

    def __init__(self, item_shape: Sequence[int], *, iwae_samples: int = 100, **autoencoder_options):
        super().__init__()
        if isinstance(iwae_samples, bool) or not isinstance(iwae_samples, int) or iwae_samples < 1:
            raise ConfigError(f"iwae_samples must be an integer >= 1, got {iwae_samples!r}")
        self.autoencoder = KLAutoencoder(item_shape, **autoencoder_options)
        self.item_shape = self.autoencoder.item_shape
        self.iwae_samples = iwae_samples
        # A sample is one decoder pass.
        self.evaluations_per_sample = 1

    def optimizer_groups(self) -> Dict[str, List[nn.Parameter]]:
        return {"model": list(self.parameters())}

    def train_step(self, x: Tensor, optimizers: Dict[str, torch.optim.Optimizer], generator: torch.Generator) -> Dict[str, float]:
        """One step on the autoencoder's loss (one reparameterized z per item); logs total, reconstruction, kl."""
        device, dtype = self.parameter_device_dtype()
        losses = self.autoencoder.loss(x.to(dtype), generator_on(device, generator))
        total = optimize(optimizers["model"], losses["total"])
        return {"total": total, "reconstruction": float(losses["reconstruction"].detach()), "kl": float(losses["kl"].detach())}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """decode(z) for z ~ N(0, I): the decoder mean, without the decoder's pixel noise, clamped to [-1, 1]."""
        return prior_samples(self.autoencoder, n, generator)

    def log_likelihood(self, x: Tensor) -> Tensor:
        """The IWAE lower bound on log p(x) in nats per item (Burda et al. 2016, eq. 8), with fixed-seed draws."""
        device, _ = self.parameter_device_dtype()
        generator = torch.Generator(device).manual_seed(LIKELIHOOD_SEED)
        return self.autoencoder.log_likelihood_bounds(x, k=self.iwae_samples, generator=generator)["iwae"]

    def bits_per_dim(self, x: Tensor, dequantize_generator: torch.Generator) -> Tensor:
        """Bits per dimension of uniformly dequantized 8-bit data from the IWAE bound (an upper bound; see families.bits)."""
        _, dtype = self.parameter_device_dtype()
        return dequantized_bits_per_dim(self.log_likelihood, x, dequantize_generator, dtype)

