"""The command-line parts for the generative families and the autoencoders (edm_space.model_training).

    edm-space autoencoder train --kind kl --data mnist --out runs/ae --option latent_channels=4
    edm-space autoencoder eval --ckpt runs/ae --out recon.png
    edm-space train --family nice --data mnist --out runs/nice        (train_family)
    edm-space sample --ckpt runs/nice --n 64 --out nice.npz           (sample_family_run)

`autoencoder_group` is a click group for edm_space.cli to register; `train_family` and
`sample_family_run` are what its `train --family` and `sample --ckpt` of such a run call.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterable, Optional

import click
import torch

from .cli_options import cadence_options, device_option, explicit_settings, parse_options, quiet_option, set_threads, show_progress, threads_option
from . import autoencoders, devices
from .data import load
from .distributed import finish_distributed
from .errors import ConfigError
from .files import check_writable_file
from .model_training import default_lr, evaluate_autoencoder, resolve_model_config, sample_model, train_model
from .plotting import image_grid_png
from .seeding import parse_seeds

# Columns of the reconstruction picture: originals in the top row, their reconstructions below.
RECONSTRUCTION_COLUMNS = 8


def _image_items(data_name: str) -> bool:
    """Whether the data set holds images (for the default batch)."""
    return load(data_name, n=1).ndim == 4


def _train(kind: str, name: str, out: str, settings: Dict[str, Any], explicit: Optional[Iterable[str]], device: str,
           echo: Callable[[str], None], progress: bool, hint: str) -> Dict[str, Any]:
    """Resolve the configuration (a stored run keeps every setting not in `explicit`), train, report in one line and
    `hint` (under torchrun: rank 0 alone, after the processes end together)."""
    given = dict(kind=kind, name=name, **settings)
    if explicit is None:  # a setting left at None takes the stored run's value, or its default
        explicit = [key for key, value in given.items() if value is not None]
    config = resolve_model_config(out, given, set(explicit) | {"kind", "name"})
    if config.batch is None:
        config.batch = 64 if _image_items(config.data) else 256
    if config.lr is None:
        config.lr = default_lr(kind, name)
    summary = train_model(config, progress=progress, device=device, echo=echo)
    if finish_distributed() == 0:
        echo(f"trained {config.describe()} on {config.data} to step {summary['steps']} ({summary['training_items']:,} items, "
             f"{summary['held_out']:,} held out); checkpoint {summary['checkpoint']}")
        echo(hint)
    return summary


def train_family(name: str, data: str, options: Dict[str, Any], out: str, data_size: Optional[int] = None,
                 held_out: Optional[int] = None, steps: int = 2000, batch: Optional[int] = None, lr: Optional[float] = None,
                 seed: int = 0, checkpoint_every: int = 500, keep_checkpoints: int = 2, log_every: int = 50,
                 device: str = "auto", explicit: Optional[Iterable[str]] = None,
                 echo: Callable[[str], None] = click.echo, progress: bool = True) -> Dict[str, Any]:
    """`edm-space train --family NAME`: train (or resume) a generative family (nice, gan, pixelcnn, vae) in `out`.

    `batch` None: 64 for images, 256 for vectors; `lr` None: the family's default (model_training.default_lr).
    `explicit` names the settings the user gave: when `out` holds a run, the others keep their stored
    values (None: every setting not left at None counts as given).
    """
    settings = dict(options=options, data=data, data_size=data_size, held_out=held_out, steps=steps, batch=batch, lr=lr,
                    seed=seed, checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints, log_every=log_every)
    return _train("family", name, out, settings, explicit, device, echo, progress, f"Sample it: edm-space sample --ckpt {out} --out samples.png")


def sample_family_run(run_dir: str, step: Optional[int] = None, num_samples: Optional[int] = None, seed: int = 0,
                      seeds: Optional[str] = None, out_path: str = "samples.npz", device: str = "cpu",
                      echo: Callable[[str], None] = click.echo) -> Dict[str, Any]:
    """`edm-space sample --ckpt RUN` for a family run (or a KL autoencoder's prior): --n/--seed or --seeds, one line out."""
    seed_list = parse_seeds(seeds) if seeds is not None else None
    summary = sample_model(run_dir, n=num_samples, seeds=seed_list, out=out_path, step=step, device=str(devices.resolve_device(device)), seed=seed)
    echo(f"{len(summary['seeds'])} samples of {run_dir} (step {summary['step']}, {summary['config'].describe()}), "
         f"{summary['evaluations']:,} network evaluations -> {', '.join(summary['written'])}")
    return summary


@click.group("autoencoder")
def autoencoder_group() -> None:
    """Train and evaluate the autoencoders of latent diffusion (kl, vq)."""


@autoencoder_group.command("train")
@click.option("--kind", type=click.Choice(list(autoencoders.TRAINABLE)), required=True, help="kl (a VAE) or vq (a VQ-VAE).")
@click.option("--data", "data_name", default="mnist", show_default=True, help="Image data set (digits, mnist), FILE.npy/.npz or a PNG folder.")
@click.option("--data-size", type=int, default=None, help="Train on a seeded subset of this many of the items not held out [default: all of them].")
@click.option("--held-out", type=int, default=None, help="Items set aside for `autoencoder eval`, the same for every run of the data [default: a tenth].")
@click.option("--option", "options", multiple=True, help="Autoencoder argument key=value, repeatable (e.g. latent_channels=4, downsample=4, num_codes=64, ema=true).")
@click.option("--steps", type=int, default=2000, show_default=True, help="Optimizer steps.")
@click.option("--batch", type=int, default=None, help="Batch size [default: 64 for images].")
@click.option("--lr", type=float, default=None, help=f"Adam learning rate [default: {default_lr('autoencoder', 'kl'):g}].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of weights, data subset, batches and noise.")
@cadence_options
@click.option("--out", "out_dir", required=True, help="Run directory (config.json, checkpoints/, log.jsonl); an existing one is resumed.")
@device_option
@threads_option
@quiet_option
def autoencoder_train_command(kind, data_name, data_size, held_out, options, steps, batch, lr, seed, checkpoint_every, keep_checkpoints,
                              log_every, out_dir, device, threads, quiet) -> None:
    """Train (or resume) a KL or VQ autoencoder on an image data set."""
    set_threads(threads)
    settings = dict(options=parse_options(options, "--option"), data=data_name, data_size=data_size, held_out=held_out, steps=steps,
                    batch=batch, lr=lr, seed=seed, checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints, log_every=log_every)
    explicit = explicit_settings(click.get_current_context(), settings, {"data": "data_name"})
    _train("autoencoder", kind, out_dir, settings, explicit, device, click.echo, show_progress(quiet),
           f"Evaluate it: edm-space autoencoder eval --ckpt {out_dir} --out recon.png")


@autoencoder_group.command("eval")
@click.option("--ckpt", "run_dir", required=True, help="An autoencoder run directory, or one of its checkpoint files.")
@click.option("--step", "checkpoint_step", type=int, default=None, help="With a run directory: the checkpoint of this step [default: the newest].")
@click.option("--n", "num_items", type=int, default=1000, show_default=True, help="Held-out items to score, a seeded random subset (all of them if fewer).")
@click.option("--iwae-samples", type=int, default=32, show_default=True, help="KL autoencoder: posterior draws of the IWAE bound.")
@click.option("--out", "out_path", default="recon.png", show_default=True, help="PNG of held-out originals (top row) above their reconstructions.")
@device_option
@threads_option
@quiet_option
def autoencoder_eval_command(run_dir, checkpoint_step, num_items, iwae_samples, out_path, device, threads, quiet) -> None:
    """Reconstruction MSE and PSNR of an autoencoder on held-out items; bits/dim (kl) or codebook use (vq)."""
    set_threads(threads)
    if os.path.splitext(out_path)[1].lower() != ".png":
        raise ConfigError(f"--out {out_path!r} must end in .png")
    check_writable_file(out_path, "--out")
    result = evaluate_autoencoder(run_dir, step=checkpoint_step, n=num_items, iwae_samples=iwae_samples, device=device)
    line = f"held-out reconstruction of {run_dir} (step {result['step']}, {result['n']} items): MSE {result['mse']:.6g}, PSNR {result['psnr']:.4f} dB"
    line += result["details"]
    columns = min(RECONSTRUCTION_COLUMNS, result["n"])
    pictures = torch.cat([result["originals"][:columns], result["reconstructions"][:columns]]).clamp(-1, 1)
    image_grid_png(out_path, pictures, ncols=columns,
                   caption=f"top: held-out originals; bottom: reconstructions (MSE {result['mse']:.4g}, PSNR {result['psnr']:.2f} dB)")
    click.echo(f"{line} -> {out_path}")
