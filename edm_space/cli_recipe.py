"""The training-recipe options of `edm-space train`: --config, post-hoc EMA profiles, learning-rate schedule,
optimizer, --init-from.

`recipe_options` adds them to the train command in one decorator; `recipe_settings` turns the values
click passes into TrainConfig fields (the option names are the fields' names).
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import click

from .cli_ema import parse_stds
from .config_file import config_option, given
from .errors import ConfigError
from .lr_schedule import LR_SCHEDULES, OPTIMIZERS

_OPTIONS = [
    config_option,
    click.option("--ema-stds", "ema_stds", default="0.05,0.10", show_default=True,
                 help="Post-hoc EMA: relative stds of the power-function EMA profiles tracked and snapshotted (EDM2 Sec. 3), or none."),
    click.option("--ema-snapshot-images", "ema_snapshot_images", type=int, default=None,
                 help="Images between EMA snapshots, for `edm-space ema` [default: one with every checkpoint]."),
    click.option("--lr-schedule", "lr_schedule", type=click.Choice(LR_SCHEDULES), default="constant", show_default=True,
                 help="Learning rate after the warm-up: constant, inverse-sqrt (EDM2's decay after --lr-ref-images) or cosine (to 0 at the last step)."),
    click.option("--lr-ref-images", "lr_ref_images", type=int, default=None,
                 help="With --lr-schedule inverse-sqrt: images after which the rate falls as 1/sqrt(images / this)."),
    click.option("--optimizer", "optimizer", type=click.Choice(OPTIMIZERS), default="adam", show_default=True,
                 help="adam (weight decay added to the gradient) or adamw (decoupled weight decay)."),
    click.option("--weight-decay", "weight_decay", type=float, default=0.0, show_default=True, help="Weight decay of the optimizer."),
    click.option("--init-from", "init_from", default=None,
                 help="Start a new run from the weights of RUN[:STEP] (a run, checkpoint file or `edm-space ema` output): fine-tuning."),
    click.option("--init-weights", "init_weights", type=click.Choice(["ema", "raw"]), default="ema", show_default=True,
                 help="With --init-from: its EMA or raw weights."),
    click.option("--tensorboard", "tensorboard", is_flag=True,
                 help="Write TensorBoard event files to RUN/tensorboard: losses per sigma bucket, lr, gradient norm, images/s, sample pictures."),
    click.option("--sample-every", "sample_every_images", type=int, default=None,
                 help="With --tensorboard: images between sample pictures [default: one with every checkpoint]."),
    click.option("--eval-every", "eval_every_images", type=int, default=None,
                 help="With --tensorboard: images between held-out losses per sigma bucket (test split, else training items) [default: none]."),
]

RECIPE_KEYS = ("ema_stds", "ema_snapshot_images", "lr_schedule", "lr_ref_images", "optimizer", "weight_decay", "init_from", "init_weights", "tensorboard",
               "sample_every_images", "eval_every_images")


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


def refuse_for_family(context: click.Context, family: str) -> None:
    """A one-line error when a recipe option is given for a --family run, which does not take them."""
    for param in context.command.params:
        if param.name in RECIPE_KEYS and given(context, param.name):
            raise ConfigError(f"{param.opts[0]} is for diffusion training; --family {family} takes its settings as --family-option key=value")
