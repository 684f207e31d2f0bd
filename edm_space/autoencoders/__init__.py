"""Autoencoders for latent diffusion: the first stage that maps images to a smaller latent space.

    vae = autoencoders.build("kl", item_shape=(1, 28, 28), latent_channels=4, downsample=4)
    vq = autoencoders.build("vq", item_shape=(1, 8, 8), num_codes=64, ema=True)

Every autoencoder takes `item_shape` first and offers `encode`, `decode`, `latents(x)`,
`loss(x, generator) -> dict` (backprop its "total") and the attribute `latent_shape`.
A new kind is one module here with such a class (its option bounds in a class attribute OPTIONS,
see edm_space.registry), added to AUTOENCODERS.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

from torch import nn

from ..errors import ConfigError
from ..registry import Registry
from .diffusers_models import DiffusersKL, DiffusersVQ
from .kl import KLAutoencoder
from .vq import VQAutoencoder

# diffusers-kl / diffusers-vq: imported by `edm-space import diffusers`, never trained here.
AUTOENCODERS: Registry = Registry("autoencoder", {"kl": KLAutoencoder, "vq": VQAutoencoder, "diffusers-kl": DiffusersKL, "diffusers-vq": DiffusersVQ})


TRAINABLE = ("kl", "vq")  # the kinds `edm-space autoencoder train` trains


def names() -> List[str]:
    """Registered autoencoder kinds."""
    return AUTOENCODERS.names()


def check_options(kind: str, options: Dict[str, Any]) -> Dict[str, Any]:
    """`options` of autoencoder `kind` if each is an argument of its class and inside its OPTIONS bounds; else ConfigError."""
    return AUTOENCODERS.check_options(AUTOENCODERS.resolve(kind), options, skip=("item_shape",))


def build(kind: str, item_shape: Sequence[int], **options) -> nn.Module:
    """Construct autoencoder `kind` for image items of shape `item_shape` = [C, H, W]; bad options are refused first."""
    kind = AUTOENCODERS.resolve(kind)
    check_options(kind, options)
    try:
        return AUTOENCODERS[kind](tuple(item_shape), **options)
    except TypeError as error:
        raise ConfigError(f"autoencoder {kind!r}: {error}") from None
