"""Non-diffusion generative families behind one interface (see base.GenerativeFamily).

    family = families.build("nice", item_shape=(1, 28, 28), couplings=4)
    optimizers = families.build_optimizers(family, lr=1e-3)
    for x in batches:
        losses = family.train_step(x, optimizers, generator)
    samples = family.sample(64, generator)                 # [64, 1, 28, 28] in [-1, 1]
    bpd = family.bits_per_dim(x_test, torch.Generator().manual_seed(0))   # None for the GAN

Bits per dimension are computed one way for every family (families.bits): a
continuous density is scored on uniformly dequantized 8-bit data with the
7-bit offset of [-1, 1] data; the discrete PixelCNN is scored on the levels.

A new family is one module here with a GenerativeFamily subclass taking
`item_shape` first (its option bounds in a class attribute OPTIONS, see
edm_space.registry), added to FAMILIES.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch

from ..errors import ConfigError
from ..registry import Registry
from .base import GenerativeFamily
from .gan import GAN
from .nice import NICE
from .pixelcnn import PixelCNN
from .vae import VAE

FAMILIES: Registry = Registry("family", {"nice": NICE, "gan": GAN, "pixelcnn": PixelCNN, "vae": VAE})


def names() -> List[str]:
    """Registered family names."""
    return FAMILIES.names()


def check_options(name: str, options: Dict[str, Any]) -> Dict[str, Any]:
    """`options` of family `name` if each is an argument of its class and inside its OPTIONS bounds; else ConfigError."""
    return FAMILIES.check_options(FAMILIES.resolve(name), options, skip=("item_shape",))


def build(name: str, item_shape: Sequence[int], **options) -> GenerativeFamily:
    """Construct family `name` for items of shape `item_shape`; bad options raise ConfigError before anything is built."""
    name = FAMILIES.resolve(name)
    check_options(name, options)
    try:
        return FAMILIES[name](tuple(item_shape), **options)
    except (TypeError, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"family {name!r}: {error}") from None


def build_optimizers(family: GenerativeFamily, lr: float) -> Dict[str, torch.optim.Optimizer]:
    """One Adam per optimizer group, with the family's betas."""
    return {group: torch.optim.Adam(parameters, lr=lr, betas=family.adam_betas) for group, parameters in family.optimizer_groups().items()}


__all__ = ["FAMILIES", "GenerativeFamily", "build", "build_optimizers", "check_options", "names"]
