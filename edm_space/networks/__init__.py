"""Raw networks F(c_in * x_hat, c_noise[, labels]): they know nothing about formulations.

    net = networks.build("mlp", item_shape=(2,), width=256)
    net = networks.build("unet", item_shape=(1, 8, 8), channels=64, channel_mult=(1, 2))
    net = networks.build("dit", item_shape=(1, 28, 28), depth=6, width=192, heads=6, patch=4)

Every network is called as net(x, c_noise, labels=None). A network built with
label_dim=num_classes takes float one-hot labels [batch, num_classes]; an all-zero row,
or labels=None, is the null label, whose embedding is learned (embedding.LabelEmbedding).

A new network is one module here with a class taking `item_shape` first (its option bounds in a class
attribute OPTIONS, see edm_space.registry), added to NETWORKS.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

from torch import nn

from ..errors import ConfigError
from ..registry import Registry
from .diffusers_models import DiffusersDiT, DiffusersUNet
from .dit import DiT
from .mlp import MLP
from .unet import UNet

NETWORKS: Registry = Registry("network", {"mlp": MLP, "unet": UNet, "dit": DiT, "diffusers-unet": DiffusersUNet, "diffusers-dit": DiffusersDiT})
IMAGE_NETWORKS = ("unet", "dit", "diffusers-unet", "diffusers-dit")  # need items [C, H, W]


def names() -> List[str]:
    """Registered network names."""
    return NETWORKS.names()


def recorded_defaults(name: str, new_run: bool) -> Dict[str, Any]:
    """The options of network `name` whose default changed after runs were trained with the old one
    (Registry.recorded_defaults): a new run records them in its net_options, a stored run without one
    rebuilds the network with the value it was trained with."""
    return NETWORKS.recorded_defaults(name, new_run)


def build(name: str, item_shape: Sequence[int], **options) -> nn.Module:
    """Construct network `name` for items of shape `item_shape`; options are checked against the class's
    signature and its OPTIONS bounds before anything is built."""
    name = NETWORKS.resolve(name)
    if name in IMAGE_NETWORKS and len(item_shape) != 3:
        raise ConfigError(f"the {name} needs image items [C, H, W]; these items have shape {list(item_shape)} (use --net mlp)")
    cls = NETWORKS[name]
    NETWORKS.check_options(name, options, skip=("item_shape",))
    try:
        return cls(tuple(item_shape), **options)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ConfigError(f"network {name!r} with options {options}: {' '.join(str(error).split())}") from None

