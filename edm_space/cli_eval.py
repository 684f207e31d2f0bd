"""`edm-space eval`: score a trained run with the field's metrics (edm_space.evaluation) and write eval.json.

    edm-space eval --ckpt runs/mnist-edm --metrics fd,fid,pr,nll,loss --n 10000 --solver heun --steps 18 --out eval.json
"""

from __future__ import annotations

import json
import shlex
from typing import Optional

import click
import torch

from . import devices
from .cli_options import device_option, quiet_option, set_threads, show_progress, threads_option
from .errors import ConfigError
from .evaluation import METRICS, EvalSettings, evaluate, format_table
from .generation import SamplerSettings
from .files import check_writable_file, write_atomic
from .rundir import disk_error


@click.command("eval")
@click.option("--ckpt", "run_dir", required=True, help="A run directory (diffusion, latent, family or autoencoder) or one of its checkpoint files.")
@click.option("--step", "checkpoint_step", type=int, default=None, help="The checkpoint of this step [default: the newest].")
@click.option("--metrics", "metric_list", default="fd", show_default=True, help=f"Comma-separated, of: {', '.join(METRICS)} (recon: autoencoders).")
@click.option("--n", "num_samples", type=int, default=10_000, show_default=True, help="Samples (seeds seed .. seed+n-1), and at most this many reference items.")
@click.option("--seed", type=int, default=0, show_default=True, help="First seed of the samples; also seeds the bootstrap and the likelihood's noise.")
@click.option("--solver", default=None, help="Solver of a diffusion run [default: its preset's own].")
@click.option("--steps", "num_steps", type=int, default=None, help="Solver steps [default: the preset's own].")
@click.option("--guidance", type=float, default=None, help="Classifier-free guidance weight for a conditional run (labels seed mod classes).")
@click.option("--batch", type=int, default=250, show_default=True, help="Samples integrated at once.")
@click.option("--bootstrap", type=int, default=10, show_default=True, help="Bootstrap resamples behind each error bar.")
@click.option("--pr-features", type=click.Choice(["classifier", "inception"]), default=None, help="Feature space of pr [default: inception with fid, else the classifier's].")
@click.option("--nll-n", type=int, default=100, show_default=True, help="Reference items whose likelihood is computed.")
@click.option("--nll-steps", type=int, default=32, show_default=True, help="RK4 steps of the PF-ODE likelihood.")
@click.option("--loss-draws", type=int, default=256, show_default=True, help="Draws per sigma bucket of the loss.")
@click.option("--floor-items", type=int, default=2000, show_default=True, help="Training items whose ideal denoiser sets the loss floor.")
@click.option("--cache-dir", default=None, help="Cache of reference features and classifiers [default: $EDM_SPACE_CACHE or ~/.cache/edm-space].")
@device_option
@threads_option
@quiet_option
@click.option("--out", "out_path", default="eval.json", show_default=True, help="FILE.json for the results.")
def eval_command(run_dir: str, checkpoint_step: Optional[int], metric_list: str, num_samples: int, seed: int, solver: Optional[str],
                 num_steps: Optional[int], guidance: Optional[float], batch: int, bootstrap: int, pr_features: Optional[str], nll_n: int,
                 nll_steps: int, loss_draws: int, floor_items: int, cache_dir: Optional[str], device: str, threads: int, out_path: str,
                 quiet: bool) -> None:
    """Score a trained run: Frechet distances (fd, fid), precision/recall, likelihood, loss against its floor.

    Prints one table and writes every figure with its bootstrap error bar to --out. The same
    command gives the same figures bit for bit; only the "seconds" it records differ.
    """
    set_threads(threads)
    if not out_path.endswith(".json"):
        raise ConfigError(f"--out {out_path!r} must end in .json")
    check_writable_file(out_path, "--out")
    if seed < 0:
        raise ConfigError(f"--seed {seed} is invalid; it must be >= 0")
    metrics = tuple(m.strip() for m in metric_list.split(",") if m.strip())
    settings = EvalSettings(metrics=metrics, n=num_samples, seed=seed, sampler=SamplerSettings(solver=solver, num_steps=num_steps),
                            guidance=guidance, batch=batch, bootstrap=bootstrap, pr_features=pr_features, nll_n=nll_n, nll_steps=nll_steps, loss_draws=loss_draws,
                            floor_items=floor_items, cache_dir=cache_dir, device=str(devices.resolve_device(device)),
                            progress=show_progress(quiet))
    result = evaluate(run_dir, settings, step=checkpoint_step)
    if torch.distributed.is_available() and torch.distributed.is_initialized():  # under torchrun: the samples were split
        rank = torch.distributed.get_rank()
        torch.distributed.destroy_process_group()
        if rank != 0:
            return
    command = ["edm-space", "eval", "--ckpt", run_dir, "--metrics", ",".join(metrics), "--n", str(num_samples), "--seed", str(seed)]
    for option, value in (("--step", checkpoint_step), ("--solver", solver), ("--steps", num_steps), ("--guidance", guidance),
                          ("--pr-features", pr_features)):
        if value is not None:
            command += [option, str(value)]
    command += ["--batch", str(batch), "--bootstrap", str(bootstrap), "--nll-n", str(nll_n), "--nll-steps", str(nll_steps),
                "--loss-draws", str(loss_draws), "--floor-items", str(floor_items), "--threads", str(threads)]
    result = {"command": shlex.join(command), **result}
    try:
        write_atomic(out_path, (json.dumps(result, indent=2) + "\n").encode())
    except OSError as error:
        raise disk_error(error, f"--out {out_path!r}") from None
    click.echo(format_table(result))
    click.echo(f"{result['kind']} run {run_dir} (step {result['step']}) against {result['reference']['n']} items of "
               f"{result['data']} ({result['reference']['split']}) -> {out_path}")
