"""The `edm-space` command line."""

from __future__ import annotations

import json
import math
import os
import sys
from typing import List, Optional

import click
import numpy as np
import torch

from .errors import ConfigError


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
def presets_command(markdown: bool) -> None:
    """Print the preset table: s(t), sigma(t), preconditioning, lambda, p_train, default sampler."""
    import presets

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


def _float_or_none(value: Optional[str], name: str) -> Optional[float]:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{name} = {value!r} is not a number") from None


@cli.command("sample")
@click.option("--ckpt", "run_dir", default=None, help="A training run directory: sample its trained model (default: the exact denoiser of --data).")
@click.option("--ema/--no-ema", default=True, show_default=True, help="With --ckpt: use the EMA weights.")
@click.option("--class", "class_label", type=int, default=None, help="With a class-conditional --ckpt: the class of every sample [default: seed mod classes].")
@click.option("--preset", default=None, help="Formulation whose ODE is integrated (see `edm-space presets`) [default: the model's, or edm].")
@click.option("--solver", default=None, help="Solver name [default: the preset's own].")
@click.option("--steps", "num_steps", type=int, default=None, help="Number of steps N [default: the preset's own].")
@click.option("--discretization", default=None, help="Time steps: edm, vp, ve, iddpm, ddpm, uniform-t, log-sigma, or FILE.json with {\"sigmas\": [...]} [default: the preset's own].")
@click.option("--sigma-min", default=None, help="Lowest noise level [default: the discretization's own].")
@click.option("--sigma-max", default=None, help="Highest noise level [default: the discretization's own].")
@click.option("--rho", type=float, default=7.0, show_default=True, help="Exponent of the edm discretization.")
@click.option("--churn", type=float, default=0.0, show_default=True, help="EDM stochastic churn S_churn (euler, heun).")
@click.option("--s-tmin", type=float, default=0.0, show_default=True, help="Churn only where sigma >= S_tmin.")
@click.option("--s-tmax", type=float, default=math.inf, show_default=True, help="Churn only where sigma <= S_tmax.")
@click.option("--s-noise", type=float, default=1.0, show_default=True, help="Churn noise inflation S_noise.")
@click.option("--data", "data_name", default="moons", show_default=True, help="Without --ckpt: built-in data set whose exact denoiser is sampled.")
@click.option("--data-size", type=int, default=5000, show_default=True, help="Without --ckpt: points of the data set the exact denoiser averages over.")
@click.option("--n", "num_samples", type=int, default=None, help="Number of samples, seeds seed .. seed+n-1 [default: 1000, or 64 with --ckpt].")
@click.option("--seed", type=int, default=0, show_default=True, help="First seed.")
@click.option("--seeds", default=None, help="Explicit seeds, e.g. 0-63 or 1,5,7-9 (overrides --n/--seed).")
@click.option("--batch", "batch_size", type=int, default=500, show_default=True, help="Samples integrated at once.")
@click.option("--eta", type=float, default=None, help="ddim / ancestral: noise strength eta.")
@click.option("--alpha", type=float, default=None, help="heun: position of the second evaluation (1 = Heun, 0.5 = midpoint).")
@click.option("--beta", type=float, default=None, help="euler-maruyama: Langevin strength.")
@click.option("--beta-schedule", default=None, help="euler-maruyama: score-sde (beta * sigma'/sigma) or constant.")
@click.option("--trajectory", is_flag=True, help="Also write every step's state and denoised estimate (STEM_trajectory.npz) and a PNG strip of the denoised estimates.")
@click.option("--out", "out_path", default="samples.npz", show_default=True, help="FILE.npz (arrays samples, seeds; a PNG beside it) or FILE.png.")
def sample_command(
    run_dir: Optional[str],
    ema: bool,
    class_label: Optional[int],
    preset: Optional[str],
    solver: Optional[str],
    num_steps: Optional[int],
    discretization: Optional[str],
    sigma_min: Optional[str],
    sigma_max: Optional[str],
    rho: float,
    churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
    data_name: str,
    data_size: int,
    num_samples: Optional[int],
    seed: int,
    seeds: Optional[str],
    batch_size: int,
    eta: Optional[float],
    alpha: Optional[float],
    beta: Optional[float],
    beta_schedule: Optional[str],
    trajectory: bool,
    out_path: str,
) -> None:
    """Sample a trained model (--ckpt RUN_DIR) or the exact denoiser of a built-in data set.

    Any preset's ODE, any solver and discretization work with any model: every
    model is a denoiser in sigma. Without --ckpt the denoiser is the posterior
    mean of the data set, so the result shows the solver's error alone.
    """
    import presets
    import samplers

    from .seeding import SeededNoise, parse_seeds

    extension = os.path.splitext(out_path)[1].lower()
    if extension not in (".npz", ".png"):
        raise ConfigError(f"--out {out_path!r} must end in .npz or .png")
    if batch_size < 1:
        raise ConfigError(f"--batch {batch_size} is invalid; it must be >= 1")
    if seeds is not None:
        seed_list = parse_seeds(seeds)
    else:
        num_samples = (64 if run_dir else 1000) if num_samples is None else num_samples
        if num_samples < 1 or seed < 0:
            raise ConfigError(f"--n {num_samples} and --seed {seed} are invalid; need n >= 1 and seed >= 0")
        seed_list = list(range(seed, seed + num_samples))

    labels_for = None
    if run_dir is not None:
        from .training import load_trained

        denoiser, config, item_shape, num_classes, step = load_trained(run_dir, ema=ema)
        preset = preset or config.preset
        source, reference = f"{run_dir} (step {step}, {'EMA' if ema else 'raw'} weights)", None
        if num_classes:
            if class_label is not None and not 0 <= class_label < num_classes:
                raise ConfigError(f"--class {class_label} is invalid; the model knows classes 0..{num_classes - 1}")
            labels_for = lambda chunk: torch.nn.functional.one_hot(  # noqa: E731
                torch.tensor([class_label if class_label is not None else s % num_classes for s in chunk]), num_classes
            ).float()
    preset = preset or "edm"
    f = presets.get(preset)
    solver = solver or f.default_solver
    samplers.get(solver)
    num_steps = f.default_steps if num_steps is None else num_steps
    lo, hi = _float_or_none(sigma_min, "--sigma-min"), _float_or_none(sigma_max, "--sigma-max")
    # Validate the whole configuration before any work: the time steps carry every range check.
    num_steps = len(samplers.time_steps(f, num_steps, discretization, lo, hi, rho=rho)) - 1  # explicit levels set N
    if run_dir is None:
        from . import data
        from .ideal import IdealDenoiser

        reference = data.load(data_name, n=data_size, seed=seed)
        denoiser, item_shape = IdealDenoiser(reference.to(torch.float64)), tuple(reference.shape[1:])
        source = f"the exact denoiser of {data_name}"

    options = {key: value for key, value in (("eta", eta), ("alpha", alpha), ("beta", beta), ("beta_schedule", beta_schedule)) if value is not None}
    recorder = TrajectoryRecorder() if trajectory else None
    chunks = [seed_list[i : i + batch_size] for i in range(0, len(seed_list), batch_size)]
    results, nfe = [], 0
    for number, chunk in enumerate(chunks):
        noise = SeededNoise(chunk)
        latents = noise.randn([len(chunk), *item_shape], dtype=torch.float64)
        model = denoiser
        if labels_for is not None:
            chunk_labels = labels_for(chunk)
            model = lambda x_hat, sigma, d=denoiser, y=chunk_labels: d(x_hat, sigma, y)  # noqa: E731
        info: dict = {}
        with torch.no_grad():
            x = samplers.sample(
                model, latents, formulation=f, solver=solver, num_steps=num_steps, discretization=discretization,
                sigma_min=lo, sigma_max=hi, churn=churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise,
                randn_like=noise.randn_like, rho=rho, info=info, progress=True,
                callback=recorder if number == 0 else None, **options,
            )
        results.append(x)
        nfe = info["nfe"]
    samples = torch.cat(results).numpy()
    if not np.isfinite(samples).all():
        raise ConfigError(f"sampling produced non-finite values ({preset}, {solver}, {num_steps} steps); try more steps")
    written = _write_samples(out_path, samples, seed_list, reference)
    if recorder is not None:
        written += recorder.save(os.path.splitext(out_path)[0] + "_trajectory")
    click.echo(f"{len(seed_list)} samples of {source} with {preset} + {solver}, {num_steps} steps, {nfe} denoiser evaluations -> {', '.join(written)}")


def _write_samples(out_path: str, samples: np.ndarray, seeds: List[int], reference) -> List[str]:
    """samples.npz (+ a PNG beside it) or a PNG alone: a scatter for 2-D points, a grid for images."""
    from .files import save_npz_atomic
    from .plotting import image_grid_png, scatter_panels_png

    extension = os.path.splitext(out_path)[1].lower()
    png_path = out_path if extension == ".png" else os.path.splitext(out_path)[0] + ".png"
    written = []
    if extension == ".npz":
        save_npz_atomic(out_path, {"samples": samples, "seeds": np.asarray(seeds, dtype=np.int64)})
        written.append(out_path)
    if samples.ndim == 2 and samples.shape[1] == 2:
        scatter_panels_png(png_path, [reference.numpy(), samples] if reference is not None else [samples])
        written.append(png_path)
    elif samples.ndim == 4 and samples.shape[1] in (1, 3):
        image_grid_png(png_path, np.clip(samples, -1, 1))
        written.append(png_path)
    elif extension == ".png":
        raise ConfigError(f"samples of shape {list(samples.shape[1:])} have no picture; write --out FILE.npz")
    return written


# ---------------------------------------------------------------------------
# train


def _parse_options(pairs: List[str], what: str) -> dict:
    """key=value pairs (values parsed as JSON when possible: 64, 0.1, [1,2], true) into a dict."""
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"{what} {pair!r} must look like key=value")
        key, value = pair.split("=", 1)
        try:
            options[key.strip().replace("-", "_")] = json.loads(value)
        except ValueError:
            options[key.strip().replace("-", "_")] = value
    return options


@cli.command("train")
@click.option("--preset", default="edm", show_default=True, help="Formulation to train under (see `edm-space presets`).")
@click.option("--data", "data_name", default="moons", show_default=True, help="Built-in data set (moons, 8gaussians, checkerboard, swissroll, digits, mnist), FILE.npy/.npz or a PNG folder.")
@click.option("--data-size", type=int, default=None, help="Use a seeded subset of this many items [default: all / 10,000 for toy sets].")
@click.option("--net", default=None, help="Network: mlp or unet [default: mlp for vectors, unet for images].")
@click.option("--net-option", "net_options", multiple=True, help="Network argument key=value, repeatable (e.g. width=256, channels=32, channel_mult=[1,2]).")
@click.option("--preset-option", "preset_options", multiple=True, help="Preset constant key=value, repeatable (e.g. sigma_data=0.5, shift=3).")
@click.option("--steps", type=int, default=2000, show_default=True, help="Optimizer steps.")
@click.option("--batch", type=int, default=256, show_default=True, help="Global batch size (split across processes under torchrun).")
@click.option("--lr", type=float, default=2e-3, show_default=True, help="Adam learning rate after warm-up.")
@click.option("--warmup", "warmup_images", type=int, default=20_000, show_default=True, help="Learning-rate warm-up, in images.")
@click.option("--grad-clip", type=float, default=1.0, show_default=True, help="Gradient-norm clipping.")
@click.option("--ema-halflife", "ema_halflife_images", type=float, default=50_000, show_default=True, help="EMA half-life in images.")
@click.option("--conditional", is_flag=True, help="Condition on the data set's class labels.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of weights, data order and noise.")
@click.option("--checkpoint-every", type=int, default=500, show_default=True, help="Steps between checkpoints.")
@click.option("--log-every", type=int, default=50, show_default=True, help="Steps between log.jsonl entries.")
@click.option("--out", "out_dir", required=True, help="Run directory (config.json, checkpoints/, log.jsonl); an existing one is resumed.")
def train_command(preset, data_name, data_size, net, net_options, preset_options, steps, batch, lr, warmup_images, grad_clip,
                  ema_halflife_images, conditional, seed, checkpoint_every, log_every, out_dir) -> None:
    """Train a network under a preset's loss; resumes the run in --out if it exists.

    Runs unchanged under `torchrun --nproc_per_node=K`: the result does not depend on K.
    """
    import presets

    from .training import TrainConfig, train

    given = dict(
        preset=preset, data=data_name, net=net, net_options=_parse_options(list(net_options), "--net-option"),
        preset_options=_parse_options(list(preset_options), "--preset-option"), data_size=data_size, steps=steps, batch=batch,
        lr=lr, warmup_images=warmup_images, grad_clip=grad_clip, ema_halflife_images=ema_halflife_images, conditional=conditional,
        seed=seed, checkpoint_every=checkpoint_every, log_every=log_every,
    )
    if os.path.isfile(os.path.join(out_dir, "config.json")):
        # Resuming: what the command line does not say comes from the run's own config.
        from .training import read_run_config

        context = click.get_current_context()
        sources = {"data": "data_name"}
        stored = read_run_config(out_dir).to_json()
        for key in given:
            source = context.get_parameter_source(sources.get(key, key))
            if source is not None and source.name != "COMMANDLINE":
                given[key] = stored[key]
        preset = given["preset"]
    presets.get(given["preset"], **given["preset_options"])  # validate early
    if given["net"] is None:
        from .data import load

        given["net"] = "unet" if load(given["data"], n=1).ndim == 4 else "mlp"
    config = TrainConfig(out=out_dir, **given)
    summary = train(config)
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        click.echo(
            f"trained {config.preset} on {config.data} to step {summary['steps']} (sigma_data {summary['sigma_data']}); "
            f"checkpoint {summary['checkpoint']}. Sample it: edm-space sample --ckpt {out_dir} --out samples.png"
        )


@cli.command("demo")
@click.option("--out", "out_dir", default="edm-space-demo", show_default=True, help="Folder for the runs, results.md/.json and demo.png.")
@click.option("--data", "data_name", default="moons", show_default=True, help="Toy data set.")
@click.option("--steps", type=int, default=2000, show_default=True, help="Training steps per preset.")
@click.option("--n", "num_samples", type=int, default=2000, show_default=True, help="Samples per configuration.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of training and sampling.")
def demo_command(out_dir: str, data_name: str, steps: int, num_samples: int, seed: int) -> None:
    """Train edm and flow on a toy set, sample each with heun and euler at 5-35 NFE, and compare.

    Prints a table of sliced W2 to fresh data against NFE and writes demo.png
    (samples side by side, and the metric against NFE). A finished run is reused.
    """
    from .demo import format_results, run_demo

    results = run_demo(out_dir, data=data_name, steps=steps, num_samples=num_samples, seed=seed, echo=click.echo)
    click.echo(format_results(results))
    click.echo(f"wrote {out_dir}/demo.png, {out_dir}/results.md and results.json in {results['seconds']:.0f} s")


# ---------------------------------------------------------------------------
# trajectories


class TrajectoryRecorder:
    """A sampler callback that keeps every step's (t, sigma, x, denoised)."""

    def __init__(self) -> None:
        self.t: List[float] = []
        self.sigma: List[float] = []
        self.x: List[np.ndarray] = []
        self.denoised: List[np.ndarray] = []

    def __call__(self, step: int, t, sigma, x, denoised) -> None:
        self.t.append(float(t))
        self.sigma.append(float(sigma))
        self.x.append(x.detach().cpu().numpy().copy())
        self.denoised.append(denoised.detach().cpu().numpy().copy())

    def save(self, stem: str, panels: int = 6) -> List[str]:
        """Write STEM.npz (t, sigma, x, denoised stacked over steps) and, for 2-D data, STEM.png."""
        from .files import save_npz_atomic
        from .plotting import scatter_panels_png

        arrays = {"t": np.asarray(self.t), "sigma": np.asarray(self.sigma), "x": np.stack(self.x), "denoised": np.stack(self.denoised)}
        save_npz_atomic(stem + ".npz", arrays)
        written = [stem + ".npz"]
        if arrays["denoised"].ndim == 3 and arrays["denoised"].shape[2] == 2:
            picks = np.unique(np.linspace(0, len(self.t) - 1, min(panels, len(self.t))).round().astype(int))
            scatter_panels_png(stem + ".png", [arrays["denoised"][i] for i in picks], extent=None)
            written.append(stem + ".png")
        return written


# ---------------------------------------------------------------------------
# bench


@cli.group("bench")
def bench_group() -> None:
    """Benchmarks on exact denoisers: `edm-space bench solvers` compares every solver with the exact ODE solution."""


def _add_bench_commands() -> None:
    from .bench import solvers_command
    from .bench_formulations import formulations_command

    bench_group.add_command(solvers_command)
    bench_group.add_command(formulations_command)


_add_bench_commands()


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


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    main()
