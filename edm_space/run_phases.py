"""Resuming a run with other settings: what may change, the phases a run records, the images it has seen.

A run is strict only about what defines its model: the network, the data (and so its shape and
classes), the formulation, the seed and the tracked EMA profiles. The learning rate, its schedule
and warm-up, --steps, the batch, gradient clipping, weight decay, the EMA half-life and the
checkpoint, log and snapshot cadences may change when a run is resumed; each resume that changes
any of them appends a phase to the run's config.json:

    {"step": 3000, "images": 768000, "changes": {"lr": [0.002, 0.0005], "batch": [256, 512]}}

The images seen after step s are counted across phases (the batch may differ between them), so
warm-up, learning-rate schedules and EMA lengths, all defined in images, continue where they were.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List

from .errors import ConfigError
from .rundir import RESUMABLE

# Settings a resumed diffusion run may change (beyond rundir.RESUMABLE).
CHANGEABLE = RESUMABLE + (
    "lr", "lr_schedule", "lr_ref_images", "warmup_images", "batch", "grad_clip", "weight_decay",
    "ema_halflife_images", "ema_rampup_ratio", "ema_snapshot_images", "label_dropout",
)
# Settings of watching a run: a resume takes the new ones without recording a phase.
WATCHING = ("tensorboard", "sample_every_images", "eval_every_images")
# Settings a run records but that do not bind a resume: where it lives, its history. (What it derives from the data is
# in its record, edm_space.run_record, not among the settings.)
NOT_COMPARED = WATCHING + ("out", "phases", "init_from", "init_weights")


def check_resumable(stored, config) -> None:
    """Refuse, in one line, to resume `stored` (the run's options, or a run_record.Run of options and record) with
    settings that define another model. A data set given is compared with the one the run trained on: a latent run
    without one of its own records its autoencoder's."""
    if stored.preset != config.preset:
        raise ConfigError(f"run directory {config.out!r} holds a {stored.preset!r} run; it cannot continue as {config.preset!r}")
    old, new = dict(stored.to_json(), data=stored.data), config.to_json()
    differing = [key for key, value in new.items()
                 if key not in CHANGEABLE + NOT_COMPARED and value is not None and old.get(key) != value]
    if differing:
        raise ConfigError(
            f"run directory {config.out!r} was made with other {', '.join(differing)}; these define the model, so "
            "it cannot continue with them (use a new --out, with --init-from to start from its weights)")


def resumed_config(stored, config, start_step: int):
    """`stored` with the changeable settings of `config`; a change is appended to its phases at `start_step`."""
    changes = {key: [getattr(stored, key), getattr(config, key)] for key in CHANGEABLE
               if getattr(config, key) != getattr(stored, key)}
    merged = dataclasses.replace(stored, out=config.out, **{key: getattr(config, key) for key in CHANGEABLE + WATCHING})
    if not changes:
        return merged
    phases: List[Dict[str, Any]] = [p for p in stored.phases if p["step"] < start_step]
    phases.append({"step": start_step, "images": images_seen(stored, start_step), "changes": changes})
    return dataclasses.replace(merged, phases=phases)


def images_seen(config, steps_done: int) -> int:
    """Training images seen after `steps_done` steps (at or after the start of the run's last phase),
    counted across the run's phases."""
    phase = next((p for p in reversed(config.phases) if p["step"] <= steps_done), None)
    if phase is None:
        return steps_done * config.batch
    return phase["images"] + (steps_done - phase["step"]) * config.batch
