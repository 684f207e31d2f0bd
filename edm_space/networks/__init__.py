"""Raw networks F(c_in * x_hat, c_noise[, labels]): they know nothing about formulations.

    net = networks.build("mlp", item_shape=(2,), width=256)
    net = networks.build("unet", item_shape=(1, 8, 8), channels=64, channel_mult=(1, 2))

A new network is one module here with a class taking `item_shape` first, added to NETWORKS.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

from torch import nn

from ..errors import ConfigError, unknown
from .mlp import MLP
from .unet import UNet

NETWORKS: Dict[str, type] = {"mlp": MLP, "unet": UNet}


def names() -> List[str]:
    """Registered network names."""
    return list(NETWORKS)


def build(name: str, item_shape: Sequence[int], **options) -> nn.Module:
    """Construct network `name` for items of shape `item_shape`."""
    if name not in NETWORKS:
        raise unknown("network", name, names())
    if name == "unet" and len(item_shape) != 3:
        raise ConfigError(f"the unet needs image items [C, H, W]; these items have shape {list(item_shape)} (use --net mlp)")
    try:
        return NETWORKS[name](tuple(item_shape), **options)
    except TypeError as error:
        raise ConfigError(f"network {name!r}: {error}") from None
    except ValueError as error:
        raise ConfigError(f"network {name!r}: {error}") from None
