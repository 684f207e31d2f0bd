"""Learning-rate schedules and the optimizer of a training run.

    constant      lr after the linear warm-up
    inverse-sqrt  lr / sqrt(max(images / lr_ref_images, 1)) after the warm-up (EDM2 eq. 16, Sec. 2.4)
    cosine        lr * (1 + cos(pi * images / run_images)) / 2, reaching 0 at the run's last image

`images` is the number of training images seen after the step; every schedule is multiplied by the
warm-up factor min(images / warmup_images, 1). The optimizer is Adam (weight decay added to the
gradient, torch.optim.Adam's L2 form) or AdamW (decoupled weight decay, Loshchilov & Hutter 2019).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .devices import make_optimizer
from .errors import ConfigError, unknown
from .run_phases import images_seen

LR_SCHEDULES = ("constant", "inverse-sqrt", "cosine")
OPTIMIZERS = ("adam", "adamw")


def learning_rate(lr: float, schedule: str, images: float, warmup_images: int = 0,
                  ref_images: Optional[float] = None, run_images: Optional[float] = None) -> float:
    """The learning rate of the step after which `images` images have been seen."""
    factor = min(images / warmup_images, 1.0) if warmup_images else 1.0
    if schedule == "inverse-sqrt":
        factor /= math.sqrt(max(images / ref_images, 1.0))  # EDM2 eq. 16
    elif schedule == "cosine":
        factor *= 0.5 * (1.0 + math.cos(math.pi * min(images / run_images, 1.0)))
    return lr * factor


def run_learning_rate(config, images: float) -> float:
    """learning_rate() with a TrainConfig's settings (its run ends after its last step's images)."""
    return learning_rate(config.lr, config.lr_schedule, images, config.warmup_images, config.lr_ref_images,
                         images_seen(config, config.steps))


def check_settings(schedule: str, ref_images: Optional[float], optimizer: str, weight_decay: float) -> None:
    """Refuse an unknown schedule or optimizer, a missing reference, a negative weight decay; one line each."""
    if schedule not in LR_SCHEDULES:
        raise unknown("lr_schedule", schedule, LR_SCHEDULES)
    if optimizer not in OPTIMIZERS:
        raise unknown("optimizer", optimizer, OPTIMIZERS)
    if schedule == "inverse-sqrt" and ref_images is None:
        raise ConfigError("lr_schedule = 'inverse-sqrt' needs lr_ref_images (--lr-ref-images): the images after which the decay starts")
    if ref_images is not None and (isinstance(ref_images, bool) or not isinstance(ref_images, (int, float)) or not 0 < ref_images < math.inf):
        raise ConfigError(f"lr_ref_images = {ref_images!r} is invalid; it must be a positive number of images")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not 0 <= weight_decay < math.inf:
        raise ConfigError(f"weight_decay = {weight_decay!r} is invalid; it must be a number >= 0")


def build_optimizer(net: nn.Module, config) -> torch.optim.Optimizer:
    """The run's optimizer: Adam(0.9, 0.999, eps 1e-8) as before, or AdamW; fused where the device has it."""
    if config.optimizer == "adam" and not config.weight_decay:
        return make_optimizer(net, config.lr)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    options = dict(lr=config.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=config.weight_decay)
    try:
        return cls(net.parameters(), fused=True, **options)
    except (RuntimeError, ValueError):
        return cls(net.parameters(), foreach=True, **options)
