"""Starting a new run from another run's weights: `train --init-from RUN[:STEP]` (fine-tuning).

The source is a diffusion run directory (its newest checkpoint, or that of STEP), one of its
checkpoint files, or a post-hoc EMA reconstruction (`edm-space ema`). Its EMA or raw weights
initialise the new network. Every tensor of the source must exist in the new network with the
same shape; tensors only the new network has (a label embedding when an unconditional model is
fine-tuned into a conditional one) keep their fresh initialisation.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
from torch import nn

from .errors import ConfigError, unknown
from .rundir import find_checkpoint, load_checkpoint

WEIGHTS = ("ema", "raw")


def parse_source(text: str) -> Tuple[str, Optional[int]]:
    """(run, step) from "RUN" or "RUN:STEP"."""
    run, colon, step = text.rpartition(":")
    if colon and step.isdigit():
        return run, int(step)
    return text, None


def load_initial_weights(net: nn.Module, source: str, weights: str = "ema") -> str:
    """Load the `weights` ("ema" or "raw") of `source` into `net`; returns a line saying what was loaded."""
    if weights not in WEIGHTS:
        raise unknown("--init-weights", weights, WEIGHTS)
    run, step = parse_source(source)
    if not os.path.exists(run):
        raise ConfigError(f"--init-from {source!r}: {run!r} does not exist; give a run directory or checkpoint file, optionally :STEP")
    try:
        _, step, path = find_checkpoint(run, step)
    except ConfigError as error:
        raise ConfigError(f"--init-from {source!r}: {str(error).replace('--ckpt ', '')}") from None
    stored = load_checkpoint(path).get("ema" if weights == "ema" else "model")
    if not isinstance(stored, dict):
        raise ConfigError(f"--init-from {source!r}: checkpoint {path!r} holds no {weights} weights")
    own = net.state_dict()
    for name, tensor in stored.items():
        if name not in own:
            raise ConfigError(f"--init-from {source!r}: tensor {name!r} of {path!r} has no place in this network; it was trained with another --net or --net-option")
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise ConfigError(f"--init-from {source!r}: tensor {name!r} has shape {list(tensor.shape)} there and {list(own[name].shape)} in this network")
    with torch.no_grad():
        for name, tensor in stored.items():
            own[name].copy_(tensor)
    fresh = [name for name in own if name not in stored]
    note = f"; {len(fresh)} tensors only this network has start fresh ({', '.join(fresh[:3])}{', ...' if len(fresh) > 3 else ''})" if fresh else ""
    return f"initialised from the {weights} weights of {path} (step {step}){note}"
