"""diffusers' AutoencoderKL and VQModel as autoencoders of this project (for latent runs made by `edm-space import
diffusers`): the interface of edm_space.autoencoders (item_shape, encode, decode, latents, latent_shape).

Their latents are those of diffusers before its scaling: a latent run records diffusers' scaling_factor and
shift_factor as the per-channel normalization z_model = (z - shift) * scale of edm_space.latent.
They are imported, not trained here: `loss` refuses in one line.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConfigError
from ..networks.diffusers_models import build_diffusers_model
from .base import Autoencoder

Tensor = torch.Tensor


class _Imported(Autoencoder):
    class_name = ""

    def __init__(self, item_shape: Sequence[int], config: Optional[Dict[str, Any]] = None):
        super().__init__()
        self.item_shape = tuple(item_shape)
        self.model = build_diffusers_model(self.class_name, config, "autoencoder")
        factor = 2 ** (len(self.model.config.block_out_channels) - 1)
        self.latent_shape = (int(self.model.config.latent_channels), self.item_shape[1] // factor, self.item_shape[2] // factor)

    def loss(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
        raise ConfigError(f"the imported {self.class_name} is not trained by edm-space; train a kl or vq autoencoder instead")


class DiffusersKL(_Imported):
    """diffusers' AutoencoderKL: a diagonal Gaussian posterior (Rombach et al. 2022, LDM's KL-regularized first stage)."""

    class_name = "AutoencoderKL"
    latent_modes = ("mean", "sample")

    def encode(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """(mean, log-variance) of the posterior q(z | x)."""
        posterior = self.model.encode(x).latent_dist
        return posterior.mean, posterior.logvar

    def decode(self, z: Tensor) -> Tensor:
        return self.model.decode(z).sample

    def latents(self, x: Tensor, mode: Optional[str] = None, generator: Optional[torch.Generator] = None) -> Tensor:
        """The posterior mean, or with mode="sample" a draw mean + exp(logvar / 2) n."""
        mode = self.check_latent_mode(mode)
        mean, logvar = self.encode(x)
        if mode == "mean":
            return mean
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=generator.device if generator else "cpu")
        return mean + (0.5 * logvar).exp() * noise.to(mean.device)


class DiffusersVQ(_Imported):
    """diffusers' VQModel (VQGAN's first stage, Esser et al. 2021): decode snaps latents to the codebook."""

    class_name = "VQModel"
    latent_modes = ("continuous",)

    def encode(self, x: Tensor) -> Tensor:
        return self.model.encode(x).latents

    def decode(self, z: Tensor, quantize: bool = True) -> Tensor:
        return self.model.decode(z, force_not_quantize=not quantize).sample

    def latents(self, x: Tensor, mode: Optional[str] = None, generator: Optional[torch.Generator] = None) -> Tensor:
        """The encoder's continuous latents (the codebook snaps them in decode)."""
        self.check_latent_mode(mode)
        return self.encode(x)
