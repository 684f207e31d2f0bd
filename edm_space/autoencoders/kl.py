"""KL-regularized variational autoencoder (Kingma & Welling 2014), the first stage of latent diffusion.

    vae = KLAutoencoder((1, 28, 28), latent_channels=4, downsample=4)   # latents [4, 7, 7]
    losses = vae.loss(x, generator)          # dict(total, reconstruction, kl); backprop losses["total"]
    z = vae.latents(x)                       # posterior means, the data of a latent diffusion model
    x_hat = vae.decode(z)

Model. Prior p(z) = N(0, I); posterior q(z|x) = N(mean(x), diag exp(logvar(x))) from
a convolutional encoder; decoder p(x|z) = N(decode(z), sigma_x^2 I) with a FIXED
sigma_x (`decoder_std`, default 0.1 in data units, i.e. images in [-1, 1]).

Loss. reconstruction = mean squared error per data element (one reparameterized
z per item), kl = KL(q(z|x) || N(0, I)) in closed form (Kingma & Welling 2014,
Appendix B) in nats per item divided by the number D of data elements, and
total = reconstruction + beta * kl. The default beta = 2 sigma_x^2 makes total
the negative ELBO of the decoder above, rescaled: E[total] = (2 sigma_x^2 / D) *
(-ELBO) - sigma_x^2 log(2 pi sigma_x^2). A smaller beta trades latent regularity
for sharper reconstructions, as in latent diffusion's KL-f autoencoders.

The encoder and decoder are the attributes `encoder` (x -> [2 latent_channels,
h, w]: means, then log-variances) and `decoder` (z -> x); any modules with the
same input and output shapes may replace them.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch.nn import functional as F

from ..errors import ConfigError
from ..registry import Option, forwards_options
from ..seeding import batch_draw
from .convolutional import CONV_OPTIONS, ConvAutoencoder

Tensor = torch.Tensor

# Log-variance range of the posterior, as latent diffusion clamps it, so exp(logvar) cannot overflow.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


def _sum_per_item(values: Tensor) -> Tensor:
    return values.reshape(values.shape[0], -1).sum(dim=1)


def gaussian_log_density(x: Tensor, mean: Tensor, logvar: "Tensor | float") -> Tensor:
    """log N(x; mean, diag exp(logvar)) in nats, summed over every axis but the first: [batch]."""
    logvar = torch.as_tensor(logvar, dtype=x.dtype, device=x.device)
    return _sum_per_item(-0.5 * (math.log(2 * math.pi) + logvar + (x - mean) ** 2 * torch.exp(-logvar)))


def kl_divergence(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, diag exp(logvar)) || N(0, I)) in nats per item: [batch].

    Kingma & Welling 2014, Appendix B: -KL = 1/2 sum_j (1 + log s_j^2 - m_j^2 - s_j^2).
    """
    return _sum_per_item(0.5 * (mean**2 + torch.exp(logvar) - 1.0 - logvar))


def reparameterize(mean: Tensor, logvar: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """z = mean + exp(logvar / 2) * eps with eps ~ N(0, I) (Kingma & Welling 2014, eq. 10)."""
    eps = batch_draw(torch.randn, mean.shape, generator, dtype=mean.dtype, device=mean.device)
    return mean + torch.exp(0.5 * logvar) * eps


@forwards_options(ConvAutoencoder)
class KLAutoencoder(ConvAutoencoder):
    """VAE with a diagonal Gaussian posterior, a N(0, I) prior and a fixed-variance Gaussian decoder.

    Args:
        item_shape: image shape [C, H, W].
        latent_channels, downsample, channels, blocks: the convolutional autoencoder's (ConvAutoencoder).
        beta: weight of the KL term; None gives 2 decoder_std^2 (the rescaled negative ELBO).
        decoder_std: the fixed sigma_x of p(x|z) = N(decode(z), sigma_x^2 I).
    """

    latent_modes = ("mean", "sample")
    has_prior = True
    # The encoder outputs the posterior's means and log-variances.
    encoder_maps = 2
    # Bounds of the options (edm_space.registry), checked before the autoencoder is built.
    OPTIONS = {**CONV_OPTIONS, "beta": Option.number(0.0, optional=True), "decoder_std": Option.number(0.0, open_low=True)}

    def __init__(self, item_shape: Sequence[int], *, beta: Optional[float] = None, decoder_std: float = 0.1, **conv_options: int):
        if not decoder_std > 0:
            raise ConfigError(f"decoder_std must be > 0, got {decoder_std!r}")
        if beta is not None and not beta >= 0:
            raise ConfigError(f"beta must be >= 0 (or None for 2 decoder_std^2), got {beta!r}")
        super().__init__(item_shape, **conv_options)
        self.decoder_std = float(decoder_std)
        self.beta = 2.0 * self.decoder_std**2 if beta is None else float(beta)

    def encode(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """The posterior q(z|x): (mean, logvar), each [batch, *latent_shape]."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: Tensor) -> Tensor:
        """The decoder mean decode(z) = E[x | z]: [batch, *item_shape]."""
        return self.decoder(z)

    def latents(self, x: Tensor, mode: Optional[str] = "mean", generator: Optional[torch.Generator] = None) -> Tensor:
        """Latents of `x`: the posterior mean (`mode="mean"`) or a draw z ~ q(z|x) (`mode="sample"`)."""
        mode = self.check_latent_mode(mode)
        mean, logvar = self.encode(x)
        return mean if mode == "mean" else reparameterize(mean, logvar, generator)

    def loss(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
        """dict(total, reconstruction, kl), each a scalar averaged over the batch; backprop `total`.

        reconstruction: mean squared error per data element with one z ~ q(z|x) per item;
        kl: closed-form KL(q(z|x) || N(0, I)) in nats per item / D (D = data elements per item);
        total: reconstruction + beta * kl.
        """
        mean, logvar = self.encode(x)
        reconstruction = F.mse_loss(self.decode(reparameterize(mean, logvar, generator)), x)
        kl = kl_divergence(mean, logvar).mean() / math.prod(self.item_shape)
        return {"total": reconstruction + self.beta * kl, "reconstruction": reconstruction, "kl": kl}

    def sample_prior(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """The VAE as a generative model: decode(z) for z ~ N(0, I), n items (the decoder mean, no pixel noise)."""
        reference = next(self.parameters(), torch.empty(0))
        z = torch.randn((n, *self.latent_shape), generator=generator, dtype=reference.dtype, device=reference.device)
        return self.decode(z)

    @torch.no_grad()
    def log_likelihood_bounds(
        self, x: Tensor, k: int = 100, generator: Optional[torch.Generator] = None
    ) -> Dict[str, Tensor]:
        """Lower bounds on log p(x) in nats per item, each [batch], from k draws z_i ~ q(z|x).

        elbo: E_q[log p(x|z)] - KL(q || p), the expectation estimated with the k draws and the
            KL in closed form (Kingma & Welling 2014, eq. 10);
        iwae: log (1/k) sum_i p(x, z_i) / q(z_i | x) (Burda et al. 2016, eq. 8), which rises
            towards log p(x) as k grows (Burda et al. 2016, Theorem 1).
        p(x|z) = N(decode(z), decoder_std^2 I) is a density on the data's continuous space.
        An evaluation: it runs without gradients, one decoder pass of the batch per draw.
        """
        if k < 1:
            raise ConfigError(f"k must be an integer >= 1, got {k!r}")
        mean, logvar = self.encode(x)
        decoder_logvar = 2.0 * math.log(self.decoder_std)
        log_likelihoods, log_weights = [], []
        for _ in range(k):
            z = reparameterize(mean, logvar, generator)
            log_likelihood = gaussian_log_density(x, self.decode(z), decoder_logvar)
            log_prior = gaussian_log_density(z, torch.zeros_like(z), 0.0)
            log_weights.append(log_likelihood + log_prior - gaussian_log_density(z, mean, logvar))
            log_likelihoods.append(log_likelihood)
        elbo = torch.stack(log_likelihoods).mean(dim=0) - kl_divergence(mean, logvar)
        iwae = torch.logsumexp(torch.stack(log_weights), dim=0) - math.log(k)
        return {"elbo": elbo, "iwae": iwae}

    def held_out_statistics(self, x: Tensor, generator: torch.Generator, iwae_samples: int) -> Dict[str, Tensor]:
        """ELBO and IWAE bounds in bits per dimension of x's 8-bit levels, uniformly dequantized (families.bits)."""
        from ..families.bits import DEQUANTIZED_SCALE, bits_per_dim, dequantize, to_levels  # families import this module
        from ..families.vae import generator_on

        y = dequantize(to_levels(x), generator, x.dtype)
        bounds = self.log_likelihood_bounds(y, k=iwae_samples, generator=generator_on(x.device, generator))
        return {name: bits_per_dim(value, math.prod(x.shape[1:]), DEQUANTIZED_SCALE) for name, value in bounds.items()}

    def summarize(self, collected: Dict[str, Tensor], iwae_samples: int) -> Dict[str, Any]:
        """Mean ELBO and IWAE bits per dimension over the evaluated items."""
        return {"elbo_bits_per_dim": float(collected["elbo"].mean()), "iwae_bits_per_dim": float(collected["iwae"].mean()),
                "iwae_samples": iwae_samples}

    def describe_evaluation(self, result: Dict[str, Any]) -> str:
        return (f"; ELBO {result['elbo_bits_per_dim']:.4f} bits/dim, IWAE (k={result['iwae_samples']}) "
                f"{result['iwae_bits_per_dim']:.4f} bits/dim")
