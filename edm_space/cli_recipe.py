"""The training-recipe options of `edm-space train`: post-hoc EMA profiles, learning-rate schedule, optimizer.

`recipe_options` adds them to the train command in one decorator; `recipe_settings` turns the values
click passes into TrainConfig fields (the option names are the fields' names).
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import click

from .cli_ema import parse_stds

_OPTIONS = [
    click.option("--ema-stds", "ema_stds", default="0.05,0.10", show_default=True,
                 help="Post-hoc EMA: relative stds of the power-function EMA profiles tracked and snapshotted (EDM2 Sec. 3), or none."),
    click.option("--ema-snapshot-images", "ema_snapshot_images", type=int, default=None,
                 help="Images between EMA snapshots, for `edm-space ema` [default: one with every checkpoint]."),
]

RECIPE_KEYS = ("ema_stds", "ema_snapshot_images")


def recipe_options(command: Callable) -> Callable:
    """Add the recipe options to a click command."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def recipe_settings(values: Dict[str, Any]) -> Dict[str, Any]:
    """TrainConfig fields from the recipe options' values."""
    settings = {key: values[key] for key in RECIPE_KEYS if key in values}
    stds = settings.get("ema_stds")
    if isinstance(stds, str):
        settings["ema_stds"] = [] if stds.strip().lower() in ("none", "") else parse_stds(stds, "--ema-stds")
    return settings
