"""Vector-quantized autoencoder (VQ-VAE; van den Oord et al. 2017), the other first stage of latent diffusion.

    vq = VQAutoencoder((1, 8, 8), latent_channels=4, downsample=2, num_codes=64, ema=True)
    losses = vq.loss(x, generator)    # total, reconstruction, codebook, commitment, usage, perplexity
    z = vq.latents(x)                 # encoder outputs before quantization, [batch, 4, 4, 4]
    x_hat = vq.decode(z)              # snaps z to the codebook, then decodes

Quantization replaces each latent vector z_e (one per spatial position, of
`latent_channels` entries) by its nearest codebook vector e_k, k = argmin ||z_e - e_j||.
The decoder's gradient is copied straight through to z_e (van den Oord et al.
2017, eq. 3: z_q = z_e + sg[e_k - z_e]).

Codebook learning, two ways:
- `ema=False`: the loss carries the codebook term ||sg[z_e] - e||^2 and the
  commitment term beta ||z_e - sg[e]||^2 (eq. 3, beta = 0.25), each a mean over
  latent elements; the codebook is a parameter the optimizer moves.
- `ema=True`: the codebook is a buffer moved by exponential moving averages of
  the assigned vectors (App. A.1, decay 0.99, Laplace-smoothed cluster sizes as
  in the paper's reference implementation); the loss carries only the
  commitment term. `loss` calls `ema_update` itself, in training mode only
  (`model.train()`); `model.eval()` leaves the codebook alone.

Dead codes: in training mode `loss` also counts, per code, the consecutive
steps in which no latent of the batch chose it; a code unused for
`restart_after` steps is re-initialised to an encoder output of the current
batch drawn at random (`restart_after=0` turns this off). `usage` is the
fraction of codes the batch used and `perplexity` exp(H) of the batch's code
histogram (num_codes when every code is used equally, 1 when one code takes all).

The codebook bookkeeping assumes one process: under data parallelism the counts
and sums of `ema_update` and the usage counters would need an all-reduce first.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from ..registry import Option, forwards_options
from .convolutional import CONV_OPTIONS, ConvAutoencoder

Tensor = torch.Tensor


@forwards_options(ConvAutoencoder)
class VQAutoencoder(ConvAutoencoder):
    """VQ-VAE with a straight-through quantizer, codebook/commitment or EMA codebook learning, dead-code restarts.

    Args:
        item_shape: image shape [C, H, W].
        latent_channels, downsample, channels, blocks: the convolutional autoencoder's (ConvAutoencoder);
            latent_channels is the dimension of each latent vector and codebook entry.
        num_codes: codebook size K.
        beta: weight of the commitment loss (0.25 in the paper).
        ema: learn the codebook by moving averages instead of the codebook loss.
        decay: the moving averages' decay gamma (0.99).
        epsilon: Laplace smoothing of the EMA cluster sizes.
        restart_after: steps a code may go unused before it is restarted; 0 disables restarts.
    """

    latent_modes = ("continuous", "quantized")
    # Bounds of the options (edm_space.registry), checked before the autoencoder is built.
    OPTIONS = {**CONV_OPTIONS, "num_codes": Option.integer(2, 1 << 16), "beta": Option.number(0.0), "ema": Option.flag(),
               "decay": Option.number(0.0, 1.0, open_low=True, open_high=True), "epsilon": Option.number(0.0, open_low=True),
               "restart_after": Option.integer(0, 1 << 30)}

    def __init__(self, item_shape: Sequence[int], *, num_codes: int = 64, beta: float = 0.25, ema: bool = False, decay: float = 0.99,
                 epsilon: float = 1e-5, restart_after: int = 100, **conv_options: int):
        if num_codes < 2:
            raise ConfigError(f"num_codes must be an integer >= 2, got {num_codes!r}")
        if not 0 < decay < 1:
            raise ConfigError(f"decay must lie in (0, 1), got {decay!r}")
        if not beta >= 0 or not epsilon > 0 or restart_after < 0:
            raise ConfigError(f"need beta >= 0, epsilon > 0, restart_after >= 0; got {beta!r}, {epsilon!r}, {restart_after!r}")
        super().__init__(item_shape, **conv_options)
        latent_channels = self.latent_shape[0]
        self.num_codes, self.beta, self.ema = int(num_codes), float(beta), bool(ema)
        self.decay, self.epsilon, self.restart_after = float(decay), float(epsilon), int(restart_after)
        # The paper's initialisation, uniform in [-1/K, 1/K]; restarts move codes the encoder never reaches.
        initial = torch.empty(num_codes, latent_channels).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        if self.ema:
            self.register_buffer("codebook", initial)
            # One pseudo-observation per code at its initial value, so codebook = embed_sum / cluster_size at start.
            self.register_buffer("cluster_size", torch.ones(num_codes))
            self.register_buffer("embed_sum", initial.clone())
        else:
            self.codebook = nn.Parameter(initial)
        self.register_buffer("unused_steps", torch.zeros(num_codes, dtype=torch.long))

    # -- the model --------------------------------------------------------

    def encode(self, x: Tensor) -> Tensor:
        """The continuous encoder output z_e: [batch, *latent_shape]."""
        return self.encoder(x)

    def nearest_codes(self, z_e: Tensor) -> Tensor:
        """argmin_k ||z_e - e_k||^2 at every position: long [batch, h, w]."""
        flat = _vectors(z_e)
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; the ||z||^2 term does not change the argmin.
        distances = (self.codebook**2).sum(dim=1) - 2.0 * flat @ self.codebook.t()
        return distances.argmin(dim=1).reshape(z_e.shape[0], *z_e.shape[2:])

    def quantize(self, z_e: Tensor) -> Tuple[Tensor, Tensor, Dict[str, Tensor]]:
        """(z_q, indices, terms) for encoder output z_e [batch, D, h, w].

        z_q: the nearest codebook vectors in the forward pass, with the gradient passed
            straight through to z_e (van den Oord et al. 2017, eq. 3);
        indices: the chosen codes, long [batch, h, w];
        terms: codebook = mean ||sg[z_e] - e||^2 (0 with ema), commitment = beta mean ||z_e - sg[e]||^2,
            usage (fraction of codes used) and perplexity (exp of the code histogram's entropy).
        """
        indices = self.nearest_codes(z_e)
        chosen = self.codebook[indices].permute(0, 3, 1, 2)  # [batch, D, h, w]
        commitment = self.beta * F.mse_loss(z_e, chosen.detach())
        codebook = torch.zeros_like(commitment) if self.ema else F.mse_loss(chosen, z_e.detach())
        z_q = z_e + (chosen - z_e).detach()
        usage, perplexity = self.code_statistics(indices)
        return z_q, indices, {"codebook": codebook, "commitment": commitment, "usage": usage, "perplexity": perplexity}

    def decode(self, z: Tensor, quantize: bool = True) -> Tensor:
        """Images from latents [batch, *latent_shape]; with `quantize`, z is first snapped to the codebook."""
        if quantize:
            z = self.codebook[self.nearest_codes(z)].permute(0, 3, 1, 2)
        return self.decoder(z)

    def latents(self, x: Tensor, mode: Optional[str] = "continuous", generator: Optional[torch.Generator] = None) -> Tensor:
        """Latents of `x`: the encoder output z_e (`"continuous"`, what latent diffusion models, since
        `decode` quantizes; Rombach et al. 2022, Sec. 3.1) or its nearest codebook vectors (`"quantized"`).
        Both are deterministic: `generator` is not used."""
        mode = self.check_latent_mode(mode)
        z_e = self.encode(x)
        return z_e if mode == "continuous" else self.codebook[self.nearest_codes(z_e)].permute(0, 3, 1, 2)

    def split_refusal(self, batch: int, parts: int) -> Optional[str]:
        return "its codebook bookkeeping (code usage, dead-code restarts, EMA averages) reads the whole batch"

    def loss(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
        """dict(total, reconstruction, codebook, commitment, usage, perplexity); backprop `total`.

        reconstruction is the mean squared error per data element; total = reconstruction +
        codebook + commitment. In training mode this also updates the codebook
        (`update_codebook`: the EMA step when `ema`, then dead-code restarts drawing from `generator`).
        """
        z_e = self.encode(x)
        z_q, indices, terms = self.quantize(z_e)
        reconstruction = F.mse_loss(self.decoder(z_q), x)
        if self.training:
            self.update_codebook(z_e.detach(), indices, generator)
        total = reconstruction + terms["codebook"] + terms["commitment"]
        return {"total": total, "reconstruction": reconstruction, **terms}

    # -- codebook bookkeeping ---------------------------------------------

    @torch.no_grad()
    def code_statistics(self, indices: Tensor) -> Tuple[Tensor, Tensor]:
        """(usage, perplexity) of a batch of code indices: the fraction of codes used and exp(H(histogram))."""
        counts = torch.bincount(indices.reshape(-1), minlength=self.num_codes).to(self.codebook.dtype)
        probabilities = counts / counts.sum()
        entropy = -torch.special.xlogy(probabilities, probabilities).sum()
        return (counts > 0).to(counts.dtype).mean(), torch.exp(entropy)

    @torch.no_grad()
    def update_codebook(self, z_e: Tensor, indices: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """One training step's codebook bookkeeping: `ema_update` (with `ema`), then `restart_dead_codes`.

        Returns the indices of the restarted codes.
        """
        if self.ema:
            self.ema_update(z_e, indices)
        return self.restart_dead_codes(z_e, indices, generator)

    @torch.no_grad()
    def ema_update(self, z_e: Tensor, indices: Tensor) -> None:
        """Move the codebook to the moving average of the vectors assigned to each code.

        van den Oord et al. 2017, App. A.1, with n_i the batch's count for code i:
            N_i <- gamma N_i + (1 - gamma) n_i,   m_i <- gamma m_i + (1 - gamma) sum_{j: k_j = i} z_e_j,
            e_i = m_i / N~_i,   N~_i = (N_i + epsilon) / (n + K epsilon) * n,   n = sum_i N_i
        (the Laplace smoothing keeps e_i finite for a code whose N_i has decayed to 0).
        """
        if not self.ema:
            raise ConfigError("ema_update needs a model built with ema=True")
        flat = _vectors(z_e).to(self.codebook.dtype)
        assignments = F.one_hot(indices.reshape(-1), self.num_codes).to(flat.dtype)  # [N, K]
        self.cluster_size.mul_(self.decay).add_(assignments.sum(dim=0), alpha=1.0 - self.decay)
        self.embed_sum.mul_(self.decay).add_(assignments.t() @ flat, alpha=1.0 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (total + self.num_codes * self.epsilon) * total
        self.codebook.copy_(self.embed_sum / smoothed[:, None])

    @torch.no_grad()
    def restart_dead_codes(self, z_e: Tensor, indices: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Count unused steps per code and re-initialise codes unused for `restart_after` steps.

        A restarted code becomes an encoder output of this batch chosen uniformly at random
        (with `ema`, its moving averages restart as one observation of that vector). Returns
        the restarted codes' indices (empty when `restart_after` is 0).
        """
        used = torch.bincount(indices.reshape(-1), minlength=self.num_codes) > 0
        self.unused_steps.add_(1).masked_fill_(used, 0)
        if self.restart_after == 0:
            return torch.zeros(0, dtype=torch.long, device=self.unused_steps.device)
        dead = torch.nonzero(self.unused_steps >= self.restart_after).reshape(-1)
        if dead.numel():
            flat = _vectors(z_e).to(self.codebook.dtype)
            rows = torch.randint(flat.shape[0], (dead.numel(),), generator=generator, device=flat.device)
            self.codebook[dead] = flat[rows]
            self.unused_steps[dead] = 0
            if self.ema:
                self.cluster_size[dead] = 1.0
                self.embed_sum[dead] = flat[rows]
        return dead

    def held_out_statistics(self, x: Tensor, generator: torch.Generator, iwae_samples: int) -> Dict[str, Tensor]:
        """The code index of every latent vector of x."""
        return {"codes": self.nearest_codes(self.encode(x))}

    def summarize(self, collected: Dict[str, Tensor], iwae_samples: int) -> Dict[str, Any]:
        """Codebook usage (fraction of codes used) and perplexity over every evaluated latent."""
        usage, perplexity = self.code_statistics(collected["codes"].to(self.codebook.device))
        return {"codebook_usage": float(usage), "perplexity": float(perplexity), "num_codes": self.num_codes}

    def describe_evaluation(self, result: Dict[str, Any]) -> str:
        return f"; codebook usage {result['codebook_usage']:.1%} of {result['num_codes']} codes, perplexity {result['perplexity']:.2f}"


def _vectors(z: Tensor) -> Tensor:
    """[batch, D, h, w] -> one D-vector per position, [batch * h * w, D] (row order matches indices.reshape(-1))."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
