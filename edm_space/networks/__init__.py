"""Raw networks F(c_in * x_hat, c_noise[, labels]): they know nothing about formulations.

    net = networks.build("mlp", item_shape=(2,), width=256)
    net = networks.build("unet", item_shape=(1, 8, 8), channels=64, channel_mult=(1, 2))
    net = networks.build("dit", item_shape=(1, 28, 28), depth=6, width=192, heads=6, patch=4)

Every network is called as net(x, c_noise, labels=None). A network built with
label_dim=num_classes takes float one-hot labels [batch, num_classes]; an all-zero row,
or labels=None, is the null label, whose embedding is learned (embedding.LabelEmbedding).

A new network is one module here with a class taking `item_shape` first, added to NETWORKS.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Dict, List, Sequence

from torch import nn

from ..errors import ConfigError, unknown
from .diffusers_models import DiffusersDiT, DiffusersUNet
from .dit import DiT
from .mlp import MLP
from .unet import UNet

NETWORKS: Dict[str, type] = {"mlp": MLP, "unet": UNet, "dit": DiT, "diffusers-unet": DiffusersUNet, "diffusers-dit": DiffusersDiT}
IMAGE_NETWORKS = ("unet", "dit", "diffusers-unet", "diffusers-dit")  # need items [C, H, W]


def names() -> List[str]:
    """Registered network names."""
    return list(NETWORKS)


def build(name: str, item_shape: Sequence[int], **options) -> nn.Module:
    """Construct network `name` for items of shape `item_shape`."""
    if name not in NETWORKS:
        raise unknown("network", name, names())
    if name in IMAGE_NETWORKS and len(item_shape) != 3:
        raise ConfigError(f"the {name} needs image items [C, H, W]; these items have shape {list(item_shape)} (use --net mlp)")
    cls = NETWORKS[name]
    parameters = inspect.signature(cls).parameters
    for key, value in options.items():
        if key not in parameters or key == "item_shape":
            valid = [k for k in parameters if k != "item_shape"]
            raise ConfigError(f"network {name!r} has no option {key!r}; valid: {', '.join(valid)}")
        check_option(name, key, value, parameters[key].default)
    try:
        return cls(tuple(item_shape), **options)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ConfigError(f"network {name!r} with options {options}: {' '.join(str(error).split())}") from None


def check_option(network: str, key: str, value: Any, default: Any) -> None:
    """A network option must be of its default's kind: a positive integer where the default is one, a finite
    number for a float, a list of positive integers for a sequence, true/false for a flag."""
    def fail(allowed: str) -> ConfigError:
        return ConfigError(f"network {network!r}: {key} = {value!r} is invalid; it must be {allowed}")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise fail("true or false")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if default > 0 else 0):
            raise fail(f"an integer >= {1 if default > 0 else 0}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise fail("a finite number >= 0")
    elif isinstance(default, (tuple, list)):
        if not isinstance(value, (tuple, list)) or not value or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
            raise fail("a list of positive integers, e.g. [1,2]")
