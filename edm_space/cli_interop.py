"""The command-line parts that move models in and out of edm-space: `edm-space export` and `edm-space import`.

    edm-space export RUN --format safetensors --out DIR        (EMA weights; --raw for the trained ones)
    edm-space export RUN --format diffusers --out DIR          (a DiT run as a diffusers model + scheduler)
    edm-space import edm-space DIR --out RUN                   (a weights directory written by export)
    edm-space import diffusers DIR --out RUN                   (a local diffusers model or pipeline folder)

`export_command` and `import_command` are registered by edm_space.cli.
"""

from __future__ import annotations

from typing import Optional

import click

from .interop.diffusers_export import export_diffusers
from .interop.diffusers_import import import_diffusers
from .interop.own_format import export_run, import_weights_run

EXPORT_FORMATS = ("safetensors", "diffusers")
IMPORT_SOURCES = ("edm-space", "diffusers")


@click.command("export")
@click.argument("run")
@click.option("--format", "export_format", type=click.Choice(list(EXPORT_FORMATS)), default="safetensors", show_default=True,
              help="safetensors: weights + config.json that `edm-space import edm-space` reads; diffusers: a DiT run as DiTTransformer2DModel + scheduler.")
@click.option("--out", "out_dir", required=True, help="A new directory to write.")
@click.option("--raw", is_flag=True, help="Export the trained weights instead of their EMA.")
@click.option("--step", "checkpoint_step", type=int, default=None, help="The checkpoint of this step [default: the newest].")
def export_command(run: str, export_format: str, out_dir: str, raw: bool, checkpoint_step: Optional[int]) -> None:
    """Write a diffusion run's denoiser (RUN: a run directory or checkpoint file) to a new directory."""
    if export_format == "safetensors":
        result = export_run(run, out_dir, ema=not raw, step=checkpoint_step)
        click.echo(f"exported {run} (step {result['step']}, {result['weights']} weights, {result['tensors']} tensors) -> {out_dir}")
        return
    result = export_diffusers(run, out_dir, ema=not raw, step=checkpoint_step)
    click.echo(f"exported {run} (step {result['step']}) as diffusers {result['model']} + {result['scheduler']} -> {out_dir}")


@click.command("import")
@click.argument("source", type=click.Choice(list(IMPORT_SOURCES)))
@click.argument("folder")
@click.option("--out", "out_dir", required=True, help="A new run directory to write.")
def import_command(source: str, folder: str, out_dir: str) -> None:
    """Make a run directory of a model from elsewhere (FOLDER); every command then works on it."""
    if source == "edm-space":
        result = import_weights_run(folder, out_dir)
        click.echo(f"imported {folder} ({result['weights']} weights, {result['tensors']} tensors) -> {out_dir}")
        return
    result = import_diffusers(folder, out_dir)
    notes = "".join(f"; note: {note}" for note in result["notes"])
    click.echo(f"imported {result['model']} + {result['scheduler']} from {folder} as {result['net']} under preset "
               f"{result['preset']} {result['preset_options']} -> {out_dir}{notes}")



def register(group: click.Group) -> None:
    """Add `export` and `import` to the `edm-space` group."""
    group.add_command(export_command)
    group.add_command(import_command)
