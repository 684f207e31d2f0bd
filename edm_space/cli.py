"""The `edm-space` command line."""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import sys
from typing import List, Optional

import click
import torch
import torch.distributed as dist

import presets
import samplers
from samplers.discretizations import load_levels
from samplers.optimize import MAX_NFE as MAX_FIT_NFE, endpoint_error, initial_levels, optimize_steps, save_levels, steps_to_fit

from . import data, devices, families, latent
from .demo import format_results, run_demo
from .errors import ConfigError
from .files import check_writable_file, remove_stale_temporaries
from .ideal import IdealDenoiser
from .reference import solve_reference
from .sampling import MAX_SAMPLES, TOY_REFERENCE_SIZE, SampleOptions, check_family_options, sample_to_file  # noqa: F401 (MAX_SAMPLES: public before)
from .seeding import SeededNoise
from .cli_eval import eval_command
from .cli_options import given_options, quiet_option, show_progress
from .cli_interop import register as register_interop
from .cli_ema import ema_command
from .cli_recipe import recipe_options, recipe_settings, refuse_for_family
from .config_file import given as user_gave
from .cli_models import autoencoder_group, explicit_settings, parse_options, sample_family_run, set_threads, train_family
from .model_training import is_model_run
from .training import load_trained, resolve_config, train


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
# options shared by several commands


device_option = click.option(
    "--device", default="auto", show_default=True,
    help="auto (CUDA if available; under torchrun the GPU of LOCAL_RANK), cpu, cuda, cuda:N or mps.",
)
precision_option = click.option(
    "--precision", type=click.Choice(list(devices.PRECISIONS)), default="fp32", show_default=True,
    help="Autocast precision of the network (weights, EMA and sampler state keep theirs); fp16 needs a GPU.",
)
compile_option = click.option("--compile", "compile_network", is_flag=True, help="Run the network through torch.compile.")
threads_option = click.option(
    "--threads", type=int, default=1, show_default=True,
    help="CPU threads for torch. One is fastest for small networks on a shared machine; raise it on an idle many-core CPU.",
)


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
@click.option("--rho", type=float, default=7.0, show_default=True, help="Exponent of the edm discretization.")
@click.option("--churn", type=float, default=0.0, show_default=True, help="EDM stochastic churn S_churn (euler, heun).")
@click.option("--s-tmin", type=float, default=0.0, show_default=True, help="Churn only where sigma >= S_tmin.")
@click.option("--s-tmax", type=float, default=math.inf, show_default=True, help="Churn only where sigma <= S_tmax.")
@click.option("--s-noise", type=float, default=1.0, show_default=True, help="Churn noise inflation S_noise.")
@click.option("--data", "data_name", default="moons", show_default=True, help="Without --ckpt: built-in data set whose exact denoiser is sampled.")
@click.option("--data-size", type=int, default=None, help="Without --ckpt: items of the data set the exact denoiser averages over [default: 5,000 for toy sets, all of an image set].")
@click.option("--n", "num_samples", type=int, default=None, help="Number of samples, seeds seed .. seed+n-1 [default: 1000, or 64 with --ckpt].")
@click.option("--seed", type=int, default=0, show_default=True, help="First seed.")
@click.option("--seeds", default=None, help="Explicit seeds, e.g. 0-63 or 1,5,7-9 (overrides --n/--seed).")
@click.option("--batch", "batch_size", type=int, default=500, show_default=True, help="Samples integrated at once.")
@click.option("--final-step", type=click.Choice(["solver", "denoise"]), default="solver", show_default=True, help="solver: the solver steps into sigma = 0; denoise: it stops at sigma_min and one denoiser call ends the run.")
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
    request = SampleOptions(preset_options=parse_options(preset_options, "--preset-option"),
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
@click.option("--checkpoint-every", type=int, default=500, show_default=True, help="Steps between checkpoints.")
@click.option("--keep-checkpoints", type=int, default=2, show_default=True, help="Checkpoints kept (older ones are deleted).")
@click.option("--log-every", type=int, default=50, show_default=True, help="Steps between log.jsonl entries.")
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
        for option, value in (("--net", net), ("--conditional", conditional or None), ("--stream-data", stream_data or None),
                              ("--latent", latent_run), ("--precision", None if precision == "fp32" else precision)):
            if value is not None:
                raise ConfigError(f"{option} is for diffusion training; --family {family} takes its settings as --family-option key=value")
        if context.get_parameter_source("preset").name == "COMMANDLINE":
            raise ConfigError(f"--preset is for diffusion training; --family {family} is not a diffusion model")
        refuse_for_family(context, family)  # edm_space/cli_recipe.py
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
    if latent_run is not None and "data" not in explicit:
        given["data"] = None  # the autoencoder's own training items (edm_space.latent.takes_autoencoder_data)
    config = resolve_config(out_dir, given, explicit)
    if config.net is None or config.batch is None:
        images = stream_data or config.latent is not None or data.load(config.data, n=1).ndim == 4
        config = dataclasses.replace(
            config,
            net=("unet" if images else "mlp") if config.net is None else config.net,
            batch=(64 if images else 256) if config.batch is None else config.batch,
        )
    summary = train(config, progress=show_progress(quiet), echo=click.echo, device=device, precision=precision, compile=compile_network,
                    stream_data=stream_data, workers=workers)
    rank = 0
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        click.echo(
            f"trained {config.preset} on {config.data or 'the data of ' + str(config.latent)} to step {summary['steps']} (sigma_data {summary['sigma_data']}); "
            f"checkpoint {summary['checkpoint']}. Sample it: edm-space sample --ckpt {out_dir} --out samples.png"
        )


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
@click.option("--out", "out_path", required=True, help="FILE.json for --discretization FILE.json.")
@threads_option
@quiet_option
def optimize_steps_command(run_dir, checkpoint_step, data_name, data_size, preset, solver, solver_options, nfe, initial, analytic_first_step,
                           sigma_min, sigma_max, calibration, held_out, seed, max_evaluations, out_path, threads, quiet) -> None:
    """Fit the time steps of a solver and NFE budget to a trained model (or an exact target).

    The steps minimize the error against the model's own probability-flow ODE solved to high
    accuracy (scipy DOP853) on calibration latents; the error before and after is reported on
    held-out latents, which the fit never sees. Use the result with --discretization FILE.json.
    """
    set_threads(threads)
    if not out_path.endswith(".json"):
        raise ConfigError(f"--out {out_path!r} must end in .json")
    check_writable_file(out_path, "--out")
    remove_stale_temporaries(os.path.dirname(os.path.abspath(out_path)))  # left by a run killed while writing
    options = parse_options(solver_options, "--solver-option")
    samplers.get(solver).check_options(options)
    num_steps = steps_to_fit(solver, nfe, analytic_first_step)  # before the reference solve: a bad solver or budget fails at once
    if sigma_max is None:
        sigma_max = float(load_levels(initial)[0]) if initial.endswith(".json") else 80.0
    for name, value in (("--calibration", calibration), ("--held-out", held_out)):
        if not 1 <= value <= 100_000:
            raise ConfigError(f"{name} {value} is invalid; it must be between 1 and 100,000")
    if run_dir is not None:
        denoiser, config, item_shape, _, step = load_trained(run_dir, step=checkpoint_step)
        if config.conditional:
            raise ConfigError("--ckpt is class-conditional; optimize-steps fits unconditional models for now")
        f = presets.get(preset) if preset else denoiser.formulation
        source = f"{run_dir} (step {step})"
        training_data = data.load(config.data, n=config.data_size, seed=config.seed) if analytic_first_step else None
    else:
        size = data_size if data_size is not None else (TOY_REFERENCE_SIZE if data_name in data.TOY_SETS else None)
        points = data.load(data_name, n=size, seed=seed)
        denoiser, item_shape = IdealDenoiser(points.to(torch.float64)), tuple(points.shape[1:])
        f = presets.get(preset or "edm")
        source = f"the exact denoiser of {data_name}"
        training_data = points
    if not sigma_max <= f.support[1]:
        raise ConfigError(f"--sigma-max {sigma_max:g} is beyond what the {f.name} preset supports (<= {f.support[1]:g})")
    initial_levels(f, num_steps, initial, sigma_min, sigma_max)  # a bad --discretization fails before the reference solve
    sampling = dict(options)
    if analytic_first_step:  # D(x; sigma -> inf) is the mean of the data the model learned
        sampling.update(analytic_first_step=True, data_mean=training_data.to(torch.float64).mean(dim=0))
    seeds = list(range(seed, seed + calibration + held_out))
    latents = SeededNoise(seeds).randn([len(seeds), *item_shape], dtype=torch.float64)
    sigma_end = min(1e-4, sigma_min / 10)

    def finish(x_hat, sigma):  # the last step of a sampler into sigma = 0 is a denoiser call
        return denoiser(x_hat, torch.full((len(x_hat),), sigma, dtype=torch.float64))

    click.echo(f"solving the probability-flow ODE of {source} for {len(seeds)} latents (DOP853, rtol 1e-8) ...", err=True)
    with torch.no_grad():
        reference = solve_reference(denoiser, latents, sigma_0=sigma_max, sigma_end=sigma_end, rtol=1e-8, finish=finish).x
        fit = optimize_steps(denoiser, f, solver, nfe, latents[:calibration], reference[:calibration], sigma_min=sigma_min,
                             sigma_max=sigma_max, max_evaluations=max_evaluations, log=None if quiet else (lambda line: click.echo(line, err=True)),
                             initial=initial, solver_options=options, analytic_first_step=analytic_first_step,
                             data_mean=sampling.get("data_mean"))
        held = latents[calibration:], reference[calibration:], f, solver
        before = endpoint_error(denoiser, *held, fit.initial_sigmas, **sampling)
        after = endpoint_error(denoiser, *held, fit.sigmas, **sampling)
    save_levels(out_path, fit.sigmas, solver=solver, nfe=fit.nfe, formulation=f.name, source=source, solver_options=options,
                analytic_first_step=analytic_first_step, initial=initial, held_out_error_before=before, held_out_error_after=after)
    click.echo(f"{solver} at {fit.nfe} NFE on {f.name}: held-out RMS error {before:.3g} with the {initial} steps -> "
               f"{after:.3g} with the fitted steps ({len(seeds) - calibration} latents); wrote {out_path}")


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
