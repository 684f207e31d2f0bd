"""`edm-space ema`: post-hoc EMA reconstruction of a trained run (EDM2 Sec. 3), written as sampleable runs.

    edm-space ema --ckpt runs/digits --std 0.02,0.05,0.10,0.15 [--at STEP]

Each std becomes a small run directory, RUN/posthoc-ema/std0.020-stepSTEP/ by default, holding the
run's config.json and one checkpoint whose weights (EMA and raw alike) are the reconstruction; give
that folder to `sample --ckpt` or `eval --ckpt` like any other run.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Optional

import click
import torch

from .errors import ConfigError
from .posthoc_ema import check_std, ema_weights, reconstruct  # noqa: F401 (ema_weights: public here before)
from .run_record import write_record
from .training import read_run
from .rundir import CHECKPOINT_FORMAT, find_checkpoint, CHECKPOINT_VERSION, checkpoint_dir, checkpoint_path, prepare_run_dir, save_checkpoint, write_json

OUT_FOLDER = "posthoc-ema"


def parse_stds(text: str, option: str = "--std") -> List[float]:
    """Relative stds from "0.05,0.1"; a one-line ConfigError naming the bad value."""
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(f"{option} {text!r} is invalid: {part.strip()!r} is not a number; give e.g. 0.05,0.10") from None
        values.append(check_std(value, option))
    return values


def reconstructed_dir(out: str, std: float, step: int) -> str:
    """The run directory of the reconstruction of `std` at `step` below `out`."""
    return os.path.join(out, f"std{std:.3f}-step{step}")


def write_reconstruction(run_dir: str, out_dir: str, std: float, step: int, weights: Dict[str, torch.Tensor]) -> str:
    """A run directory `out_dir` (config.json and record.json of `run_dir`, one checkpoint of `step`) holding `weights`."""
    run = read_run(run_dir)
    config = run.config.to_json()
    path = checkpoint_path(out_dir, step)
    record = dataclasses.replace(run.record, step=step, checkpoint=os.path.relpath(path, out_dir))
    prepare_run_dir(out_dir)
    os.makedirs(checkpoint_dir(out_dir), exist_ok=True)
    state = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": step,
        "model": weights, "ema": weights, "config": json.dumps(config), "record": json.dumps(record.to_json()),
        "posthoc_ema": {"std": std, "source": os.path.abspath(run_dir)},
    }
    save_checkpoint(path, state)
    write_record(out_dir, record)
    write_json(os.path.join(out_dir, "config.json"), config)
    return out_dir


@click.command("ema")
@click.option("--ckpt", "run_dir", required=True, help="A diffusion training run directory with EMA snapshots.")
@click.option("--std", "stds", required=True, help="Relative EMA stds to reconstruct, comma-separated (e.g. 0.02,0.05,0.10,0.15).")
@click.option("--at", "step", type=int, default=None, help="A snapshotted step [default: the newest snapshot].")
@click.option("--out", "out_dir", default=None, help=f"Folder for the reconstructed runs [default: RUN/{OUT_FOLDER}].")
def ema_command(run_dir: str, stds: str, step: Optional[int], out_dir: Optional[str]) -> None:
    """Post-hoc EMA: rebuild the EMA of any relative std from a run's stored snapshots (EDM2 Sec. 3).

    Each std is written as a run directory with one checkpoint; sample it with `sample --ckpt DIR`.
    """
    if not os.path.isfile(os.path.join(run_dir, "config.json")):
        raise ConfigError(f"--ckpt {run_dir!r} is not a run directory (no config.json)")
    values = parse_stds(stds)
    at, results, coefficients = reconstruct(run_dir, values, at=step)
    out_dir = out_dir if out_dir is not None else os.path.join(run_dir, OUT_FOLDER)
    for std in values:
        target = write_reconstruction(run_dir, reconstructed_dir(out_dir, std, at), std, at, results[std])
        click.echo(f"std {std:.3f} at step {at}: {len(coefficients[std])} stored profiles combined -> {target}")
