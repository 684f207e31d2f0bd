"""The `edm-space` command line."""

from __future__ import annotations

import errno
import os
import sys
from typing import List, Optional

import click

import presets
import samplers
from samplers.optimize import MAX_NFE as MAX_FIT_NFE

from . import families, latent
from .demo import format_results, run_demo
from .errors import ConfigError
from .generation import SamplerSettings
from .sampling import MAX_SAMPLES, SampleOptions, check_family_options, sample_options, sample_to_file  # noqa: F401 (MAX_SAMPLES, SampleOptions: public before)
from .step_fitting import StepFit, fit_steps_to_file
from .cli_options import (cadence_options, compile_option, device_option, explicit_settings, given_options, parse_options, precision_option,
                          quiet_option, set_threads, show_progress, threads_option)
from .cli_eval import eval_command
from .cli_interop import register as register_interop
from .cli_ema import ema_command
from .cli_recipe import recipe_options, recipe_settings, refuse_for_family
from .config_file import given as user_gave
from .cli_models import autoencoder_group, sample_family_run, train_family
from .model_training import is_model_run
from .distributed import finish_distributed
from .training import run_config, train


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """edm-space: diffusion and flow models as one design space.

    Every preset (edm, vp, ve, iddpm, ddpm, ddim, flow, sd3) is a choice of
    sigma(t), s(t), preconditioning, loss weighting and training noise; every
    solver samples every preset.
    """


# ---------------------------------------------------------------------------
# presets


@cli.command("presets")
@click.option("--markdown", is_flag=True, help="Print a Markdown table instead of aligned text.")
@quiet_option
def presets_command(markdown: bool, quiet: bool) -> None:
    """Print the preset table: s(t), sigma(t), preconditioning, lambda, p_train, default sampler."""
    rows = [presets.get(name).describe() for name in presets.names()]
    click.echo(format_table(rows, markdown=markdown))


def format_table(rows: List[dict], markdown: bool = False) -> str:
    """Rows of equal keys as an aligned text table or a Markdown table."""
    keys = list(rows[0])
    cells = [[str(row[key]) for key in keys] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()  # noqa: E731
    return "\n".join([line(keys), line(["-" * w for w in widths])] + [line(c) for c in cells])


# ---------------------------------------------------------------------------
# sample

@cli.command("sample")
@click.option("--ckpt", "run_dir", default=None, help="A training run directory, or one of its checkpoint files: sample its trained model (default: the exact denoiser of --data).")
@click.option("--step", "checkpoint_step", type=int, default=None, help="With --ckpt RUN_DIR: the checkpoint of this step [default: the newest].")
@click.option("--ema/--no-ema", default=True, show_default=True, help="With --ckpt: use the EMA weights.")
@click.option("--ema-std", type=float, default=None, help="With --ckpt: post-hoc EMA of this relative std, rebuilt from the run's snapshots at --step (see `edm-space ema`).")
@click.option("--class", "class_label", type=int, default=None, help="With a class-conditional --ckpt: the class of every sample [default: seed mod classes].")
@click.option("--guidance", "guidance_weight", type=float, default=None, help="Guidance weight w: D_w = D_guide + w (D - D_guide); 1 is the conditional model alone (the guide is not evaluated). The guide is the null label (classifier-free) or --guide.")
@click.option("--guidance-interval", default=None, help="SIGMA_LO,SIGMA_HI: guide only where SIGMA_LO < sigma <= SIGMA_HI [default: everywhere].")
@click.option("--guide", "guide_dir", default=None, help="Autoguidance: a run directory (or checkpoint) of a weaker model of the same data that guides --ckpt.")
@click.option("--guide-step", type=int, default=None, help="With --guide RUN_DIR: the checkpoint of this step [default: the newest].")
@click.option("--preset", default=None, help="Formulation whose ODE is integrated (see `edm-space presets`) [default: the model's own, with its options; or edm].")
@click.option("--preset-option", "preset_options", multiple=True, help="Preset constant key=value for the integrated ODE, repeatable (e.g. shift=3).")
@click.option("--solver", default=None, help=f"Solver: {', '.join(samplers.names())} [default: the preset's own].")
@click.option("--solver-option", "solver_options", multiple=True, help="Solver option key=value, repeatable (e.g. eta=0.5 for ddim, alpha=0.5 for heun).")
@click.option("--steps", "num_steps", type=int, default=None, help="Number of steps N [default: the preset's own].")
@click.option("--discretization", default=None, help=f"Time steps: {', '.join(samplers.discretization_names())}, or FILE.json with {{\"sigmas\": [...]}} (edm-space optimize-steps) [default: the preset's own].")
@click.option("--sigma-min", default=None, help="Lowest noise level [default: the discretization's own].")
@click.option("--sigma-max", default=None, help="Highest noise level [default: the discretization's own].")
@click.option("--rho", type=float, default=SamplerSettings.rho, show_default=True, help="Exponent of the edm discretization.")
@click.option("--churn", type=float, default=SamplerSettings.churn, show_default=True, help="EDM stochastic churn S_churn (euler, heun).")
@click.option("--s-tmin", type=float, default=SamplerSettings.s_tmin, show_default=True, help="Churn only where sigma >= S_tmin.")
@click.option("--s-tmax", type=float, default=SamplerSettings.s_tmax, show_default=True, help="Churn only where sigma <= S_tmax.")
@click.option("--s-noise", type=float, default=SamplerSettings.s_noise, show_default=True, help="Churn noise inflation S_noise.")
@click.option("--data", "data_name", default="moons", show_default=True, help="Without --ckpt: built-in data set whose exact denoiser is sampled.")
@click.option("--data-size", type=int, default=None, help="Without --ckpt: items of the data set the exact denoiser averages over [default: 5,000 for toy sets, all of an image set].")
@click.option("--n", "num_samples", type=int, default=None, help="Number of samples, seeds seed .. seed+n-1 [default: 1000, or 64 with --ckpt].")
@click.option("--seed", type=int, default=0, show_default=True, help="First seed.")
@click.option("--seeds", default=None, help="Explicit seeds, e.g. 0-63 or 1,5,7-9 (overrides --n/--seed).")
@click.option("--batch", "batch_size", type=int, default=500, show_default=True, help="Samples integrated at once.")
@click.option("--final-step", type=click.Choice(["solver", "denoise"]), default=SamplerSettings.final_step, show_default=True, help="solver: the solver steps into sigma = 0; denoise: it stops at sigma_min and one denoiser call ends the run.")
@click.option("--analytic-first-step", is_flag=True, help="Replace the first evaluation, at sigma_max, by its limit: the mean of the model's training data (or of --data), saving one NFE.")
@click.option("--trajectory", is_flag=True, help="Also write every step's state and denoised estimate (STEM_trajectory.npz) and a PNG strip of the denoised estimates, each frame labelled with its sigma.")
@click.option("--out", "out_path", default="samples.npz", show_default=True, help="FILE.npz (arrays samples, seeds; a PNG beside it) or FILE.png; missing folders are created.")
@click.option("--sampler-dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True, help="dtype of the sampler's state; float32 where float64 is slow (consumer GPUs).")
@device_option
@precision_option
@compile_option
@threads_option
@quiet_option
def sample_command(threads: int, preset_options, solver_options, **options) -> None:
    """Sample a trained model (--ckpt RUN_DIR) or the exact denoiser of a built-in data set.

    Any preset's ODE, any solver and discretization work with any model: every
    model is a denoiser in sigma. Without --ckpt the denoiser is the posterior
    mean of the data set, so the result shows the solver's error alone.
    """
    set_threads(threads)
    run_dir, quiet = options["run_dir"], options.pop("quiet")
    if run_dir is not None and is_model_run(run_dir):  # a family or an autoencoder run: its own sampler
        check_family_options(run_dir, given_options(click.get_current_context()))
        sample_family_run(run_dir, options["checkpoint_step"], options["num_samples"], options["seed"], options["seeds"],
                          options["out_path"], options["device"])
        return
    request = sample_options(preset_options=parse_options(preset_options, "--preset-option"),
                             solver_options=parse_options(solver_options, "--solver-option"), progress=show_progress(quiet), **options)
    sample_to_file(request, echo=click.echo, warn=lambda line: click.echo(f"warning: {line}", err=True))


# ---------------------------------------------------------------------------
# train


@cli.command("train")
@click.option("--preset", default="edm", show_default=True, help="Formulation to train under (see `edm-space presets`).")
@click.option("--family", type=click.Choice(families.names()), default=None, help="Train another family of generative model instead of a diffusion model.")
@click.option("--family-option", "family_options", multiple=True, help="With --family: its argument key=value, repeatable (e.g. couplings=4, loss=hinge).")
@click.option("--data", "data_name", default="moons", show_default=True, help="Built-in data set (moons, 8gaussians, checkerboard, swissroll, digits, mnist), FILE.npy/.npz (arrays x and labels or y) or a PNG folder.")
@click.option("--data-size", type=int, default=None, help="Use a seeded subset of this many items [default: all / 10,000 for toy sets].")
@click.option("--net", default=None, help="Network: mlp, unet, dit, or your own package.module:Class [default: mlp for vectors, unet for images].")
@click.option("--net-option", "net_options", multiple=True, help="Network argument key=value, repeatable (e.g. width=256, channels=32, channel_mult=[1,2]).")
@click.option("--preset-option", "preset_options", multiple=True, help="Preset constant key=value, repeatable (e.g. sigma_data=0.5, shift=3).")
@click.option("--steps", type=int, default=2000, show_default=True, help="Optimizer steps.")
@click.option("--batch", type=int, default=None, help="Global batch size (split across processes under torchrun) [default: 256 for vectors, 64 for images].")
@click.option("--lr", type=float, default=2e-3, show_default=True, help="Adam learning rate after warm-up.")
@click.option("--warmup", "warmup_images", type=int, default=20_000, show_default=True, help="Learning-rate warm-up, in images.")
@click.option("--grad-clip", type=float, default=1.0, show_default=True, help="Gradient-norm clipping.")
@click.option("--ema-halflife", "ema_halflife_images", type=float, default=50_000, show_default=True, help="EMA half-life in images.")
@click.option("--conditional", is_flag=True, help="Condition on the data set's class labels.")
@click.option("--label-dropout", type=float, default=0.1, show_default=True, help="With --conditional: fraction of training rows given the null label, so that one network also learns the unconditional model (classifier-free guidance).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of weights, data order and noise.")
@cadence_options
@click.option("--out", "out_dir", required=True, help="Run directory (config.json, checkpoints/, log.jsonl); an existing one is resumed.")
@click.option("--latent", "latent_run", default=None, help="Latent diffusion: an autoencoder run (edm-space autoencoder train) whose latents of --data the model learns.")
@click.option("--latent-mode", type=click.Choice(list(latent.LATENT_MODES)), default="mean", show_default=True, help="With a KL autoencoder: its posterior mean or a sample as the latent.")
@click.option("--stream-data", is_flag=True, help="Read a PNG folder image by image with DataLoader workers instead of holding it in memory (same run).")
@click.option("--workers", type=int, default=2, show_default=True, help="With --stream-data: DataLoader worker processes.")
@device_option
@precision_option
@compile_option
@threads_option
@recipe_options
@quiet_option
def train_command(preset, family, family_options, data_name, data_size, net, net_options, preset_options, steps, batch, lr, warmup_images, grad_clip,
                  ema_halflife_images, conditional, label_dropout, seed, checkpoint_every, keep_checkpoints, log_every, out_dir, latent_run, latent_mode, stream_data, workers, device,
                  precision, compile_network, threads, quiet, **recipe) -> None:
    """Train a network under a preset's loss; resumes the run in --out if it exists.

    Runs unchanged under `torchrun --nproc_per_node=K`: the result depends on K only through
    floating-point reduction order.
    """
    set_threads(threads)
    context = click.get_current_context()
    if family is not None:
        _refuse_diffusion_options(context, family, net=net, conditional=conditional, stream_data=stream_data,
                                  latent=latent_run, precision=precision)
        settings = ["data", "data_size", "steps", "batch", "lr", "seed", "checkpoint_every", "keep_checkpoints", "log_every", "options"]
        explicit = explicit_settings(context, settings, {"data": "data_name", "options": "family_options"})
        train_family(family, data_name, parse_options(family_options, "--family-option"), out_dir, data_size=data_size, steps=steps,
                     batch=batch, lr=lr if "lr" in explicit else None, seed=seed, checkpoint_every=checkpoint_every,
                     keep_checkpoints=keep_checkpoints, log_every=log_every, device=device, explicit=explicit, progress=show_progress(quiet))
        return
    given = dict(
        preset=preset, data=data_name, net=net, net_options=parse_options(net_options, "--net-option"),
        preset_options=parse_options(preset_options, "--preset-option"), data_size=data_size, steps=steps, batch=batch,
        lr=lr, warmup_images=warmup_images, grad_clip=grad_clip, ema_halflife_images=ema_halflife_images, conditional=conditional,
        label_dropout=label_dropout, seed=seed, checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints, log_every=log_every,
        latent=latent_run, latent_mode=latent_mode,
        **recipe_settings(recipe),  # edm_space/cli_recipe.py
    )
    sources = {"data": "data_name", "latent": "latent_run"}
    explicit = [key for key in given if user_gave(context, sources.get(key, key))]  # on the command line or in --config
    config = run_config(out_dir, given, explicit, stream_data)
    summary = train(config, progress=show_progress(quiet), echo=click.echo, device=device, precision=precision, compile=compile_network,
                    stream_data=stream_data, workers=workers)
    if finish_distributed() == 0:
        click.echo(
            f"trained {config.preset} on {config.data or 'the data of ' + str(config.latent)} to step {summary['steps']} (sigma_data {summary['sigma_data']}); "
            f"checkpoint {summary['checkpoint']}. Sample it: edm-space sample --ckpt {out_dir} --out samples.png"
        )


def _refuse_diffusion_options(context: click.Context, family: str, **given) -> None:
    """Refuse, in one line, an option of diffusion training given with --family."""
    given["precision"] = None if given["precision"] == "fp32" else given["precision"]
    given["conditional"] = given["conditional"] or None
    given["stream_data"] = given["stream_data"] or None
    for name, value in given.items():
        if value is not None:
            raise ConfigError(f"--{name.replace('_', '-')} is for diffusion training; --family {family} takes its settings as --family-option key=value")
    if context.get_parameter_source("preset").name == "COMMANDLINE":
        raise ConfigError(f"--preset is for diffusion training; --family {family} is not a diffusion model")
    refuse_for_family(context, family)  # edm_space/cli_recipe.py


@cli.command("optimize-steps")
@click.option("--ckpt", "run_dir", default=None, help="A training run directory or checkpoint file [default: the exact denoiser of --data].")
@click.option("--step", "checkpoint_step", type=int, default=None, help="With --ckpt RUN_DIR: the checkpoint of this step [default: the newest].")
@click.option("--data", "data_name", default="moons", show_default=True, help="Without --ckpt: built-in data set whose exact denoiser is the target.")
@click.option("--data-size", type=int, default=None, help="Without --ckpt: items the exact denoiser averages over [default: 5,000 for toy sets, all of an image set].")
@click.option("--preset", default=None, help="Formulation whose ODE the solver integrates [default: the model's own, or edm].")
@click.option("--solver", required=True, help="A deterministic solver (see the README's solver table).")
@click.option("--solver-option", "solver_options", multiple=True, help="Solver option key=value, repeatable (e.g. taylor=true for dpm++3m); recorded in the output.")
@click.option("--nfe", type=int, required=True, help=f"Denoiser evaluations per sample to fit the steps for (at most {MAX_FIT_NFE}).")
@click.option("--discretization", "initial", default="edm", show_default=True,
              help="The levels the fit starts from: a discretization name on [--sigma-min, --sigma-max], or FILE.json (its levels, first at sigma-max).")
@click.option("--analytic-first-step", is_flag=True, help="Replace the first evaluation by the data mean (one NFE saved, so one more step).")
@click.option("--sigma-min", type=float, default=0.002, show_default=True, help="Lowest level of the starting steps (for a discretization name).")
@click.option("--sigma-max", type=float, default=None, help="The first level, kept fixed [default: 80, or the first level of --discretization FILE.json].")
@click.option("--calibration", type=int, default=64, show_default=True, help="Latents the steps are fitted on (seeds seed ..).")
@click.option("--held-out", type=int, default=256, show_default=True, help="Other latents the fitted steps are scored on.")
@click.option("--seed", type=int, default=0, show_default=True, help="First seed of the calibration latents.")
@click.option("--max-evaluations", type=int, default=1000, show_default=True, help="Sampling runs the fit may use.")
@click.option("--class-label", type=int, default=None,
              help="With a class-conditional --ckpt: the class to fit for [default: the null label, i.e. unconditional sampling].")
@click.option("--out", "out_path", required=True, help="FILE.json for --discretization FILE.json.")
@threads_option
@quiet_option
def optimize_steps_command(run_dir, checkpoint_step, data_name, data_size, preset, solver, solver_options, nfe, initial, analytic_first_step,
                           sigma_min, sigma_max, calibration, held_out, seed, max_evaluations, class_label, out_path, threads,
                           quiet) -> None:
    """Fit the time steps of a solver and NFE budget to a trained model (or an exact target).

    The steps minimize the error against the model's own probability-flow ODE solved to high
    accuracy (scipy DOP853) on calibration latents; the error before and after is reported on
    held-out latents, which the fit never sees. Use the result with --discretization FILE.json.
    """
    set_threads(threads)
    fit = StepFit(solver=solver, nfe=nfe, out_path=out_path, run_dir=run_dir, checkpoint_step=checkpoint_step, data_name=data_name,
                  data_size=data_size, preset=preset, solver_options=parse_options(solver_options, "--solver-option"), initial=initial,
                  analytic_first_step=analytic_first_step, sigma_min=sigma_min, sigma_max=sigma_max, calibration=calibration,
                  held_out=held_out, seed=seed, max_evaluations=max_evaluations, class_label=class_label)
    to_stderr = lambda line: click.echo(line, err=True)  # noqa: E731
    result = fit_steps_to_file(fit, echo=to_stderr, log=None if quiet else to_stderr)
    click.echo(f"{solver} at {result['nfe']} NFE on {result['formulation']}: held-out RMS error {result['before']:.3g} with the "
               f"{initial} steps -> {result['after']:.3g} with the fitted steps ({result['held_out']} latents); wrote {out_path}")


@cli.command("demo")
@click.option("--out", "out_dir", default="edm-space-demo", show_default=True, help="Folder for the runs, results.md/.json and demo.png.")
@click.option("--data", "data_name", default="moons", show_default=True, help="Toy data set.")
@click.option("--steps", type=int, default=2000, show_default=True, help="Training steps per preset.")
@click.option("--n", "num_samples", type=int, default=2000, show_default=True, help="Samples per configuration.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of training and sampling.")
@quiet_option
def demo_command(out_dir: str, data_name: str, steps: int, num_samples: int, seed: int, quiet: bool) -> None:
    """Train edm and flow on a toy set, sample each with heun and euler at 5-35 NFE, and compare.

    Prints a table of sliced W2 to fresh data against NFE and writes demo.png
    (samples side by side, and the metric against NFE). A finished run is reused.
    """
    results = run_demo(out_dir, data=data_name, steps=steps, num_samples=num_samples, seed=seed, echo=click.echo, progress=show_progress(quiet))
    click.echo(format_results(results))
    click.echo(f"wrote {out_dir}/demo.png, {out_dir}/results.md and results.json in {results['seconds']:.0f} s")


cli.add_command(autoencoder_group)
cli.add_command(eval_command)
cli.add_command(ema_command)
register_interop(cli)


# ---------------------------------------------------------------------------
# entry point


def main(argv: Optional[List[str]] = None) -> None:
    """Run the command line; bad input ends with one line on stderr and exit code 2.

    Set EDM_SPACE_DEBUG=1 to see the traceback behind such a line.
    """
    try:
        cli.main(args=argv, prog_name="edm-space", standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.ClickException as error:
        click.echo(f"error: {_one_line(error.format_message())}", err=True)
        sys.exit(2)
    except ValueError as error:  # ConfigError and the library's other checks of user input
        if os.environ.get("EDM_SPACE_DEBUG"):
            raise
        click.echo(f"error: {_one_line(str(error))}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as error:  # a full disk or closed output stream, where no ConfigError named the file
        if os.environ.get("EDM_SPACE_DEBUG"):
            raise
        _silence_stdout()
        reason = "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
        click.echo(f"error: {_one_line(reason)}{f' ({error.filename})' if error.filename else ''}", err=True)
        sys.exit(1)
    except MemoryError:
        click.echo("error: out of memory; use a smaller --batch, --n or network", err=True)
        sys.exit(1)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush of a broken stream prints nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    main()
