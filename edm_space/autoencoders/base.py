"""The interface every autoencoder implements, so that training, evaluation, latent diffusion and sampling
never branch on the kind of autoencoder (as edm_space.families.base does for the generative families).

    z = autoencoder.latents(x)                          # the default latent mode, latent_modes[0]
    x_hat = autoencoder.reconstruct(x)                  # decode(latents(x))
    losses = autoencoder.loss(x, generator)             # dict with "total"; backprop it
    values = autoencoder.held_out_statistics(x, generator, iwae_samples)   # per batch, e.g. likelihood bounds
    summary = autoencoder.summarize(collected, iwae_samples)               # over every batch
    autoencoder.has_prior                               # whether decode(z ~ prior) is a generative model

Images arrive in [-1, 1] as floats [B, C, H, W].
"""

from __future__ import annotations

import abc
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from ..errors import ConfigError

Tensor = torch.Tensor


class Autoencoder(nn.Module, abc.ABC):
    """Base class of the autoencoders; subclasses set item_shape, latent_shape and latent_modes."""

    item_shape: Tuple[int, ...]
    latent_shape: Tuple[int, ...]
    # The modes `latents` takes; the first is the default, which latent diffusion encodes with and evaluation reconstructs through.
    latent_modes: Tuple[str, ...] = ()
    # Whether decode(z) for z from a fixed prior is a generative model of its own (`edm-space sample --ckpt`).
    has_prior: bool = False

    @abc.abstractmethod
    def encode(self, x: Tensor) -> Any:
        """The encoder's output for images x."""

    @abc.abstractmethod
    def decode(self, z: Tensor) -> Tensor:
        """Images [batch, *item_shape] from latents [batch, *latent_shape]."""

    @abc.abstractmethod
    def latents(self, x: Tensor, mode: Optional[str] = None, generator: Optional[torch.Generator] = None) -> Tensor:
        """Latents [batch, *latent_shape] of images x in one of latent_modes (None: the default)."""

    @abc.abstractmethod
    def loss(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
        """The training losses of the batch x (scalars); backprop "total"."""

    def split_refusal(self, batch: int, parts: int) -> Optional[str]:
        """As GenerativeFamily.split_refusal: None (the default) when a training step splits into `parts` processes."""
        return None

    def check_latent_mode(self, mode: Optional[str]) -> str:
        """`mode` (None: the default) if this autoencoder has it, else a one-line ConfigError naming the valid ones."""
        mode = self.latent_modes[0] if mode is None else mode
        if mode not in self.latent_modes:
            raise ConfigError(f"latent mode {mode!r} is not supported by the {type(self).__name__}; valid: {', '.join(self.latent_modes)}")
        return mode

    def reconstruct(self, x: Tensor) -> Tensor:
        """decode(latents(x)) in the default latent mode."""
        return self.decode(self.latents(x))

    def held_out_statistics(self, x: Tensor, generator: torch.Generator, iwae_samples: int) -> Dict[str, Tensor]:
        """Per-item or per-latent values of one evaluation batch, concatenated over batches for `summarize`."""
        return {}

    def summarize(self, collected: Dict[str, Tensor], iwae_samples: int) -> Dict[str, Any]:
        """The evaluation's numbers from every batch's held_out_statistics."""
        return {}

    def describe_evaluation(self, result: Dict[str, Any]) -> str:
        """The summarize numbers as the end of `autoencoder eval`'s line ("" when there are none)."""
        return ""

    def sample_prior(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """n images decoded from prior draws; refused when the autoencoder has no prior."""
        raise ConfigError(f"the {type(self).__name__} has no prior to sample; train a generative model on its latents")
