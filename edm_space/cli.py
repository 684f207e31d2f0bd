"""The `edm-space` command line."""

from __future__ import annotations

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
@click.option("--preset", default="edm", show_default=True, help="Formulation whose ODE is integrated (see `edm-space presets`).")
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
@click.option("--data", "data_name", default="moons", show_default=True, help="Built-in data set whose exact denoiser is sampled.")
@click.option("--data-size", type=int, default=5000, show_default=True, help="Points of the data set the exact denoiser averages over.")
@click.option("--n", "num_samples", type=int, default=1000, show_default=True, help="Number of samples (seeds seed .. seed+n-1).")
@click.option("--seed", type=int, default=0, show_default=True, help="First seed.")
@click.option("--seeds", default=None, help="Explicit seeds, e.g. 0-99 or 1,5,7-9 (overrides --n/--seed).")
@click.option("--eta", type=float, default=None, help="ddim / ancestral: noise strength eta.")
@click.option("--alpha", type=float, default=None, help="heun: position of the second evaluation (1 = Heun, 0.5 = midpoint).")
@click.option("--beta", type=float, default=None, help="euler-maruyama: Langevin strength.")
@click.option("--beta-schedule", default=None, help="euler-maruyama: score-sde (beta * sigma'/sigma) or constant.")
@click.option("--trajectory", is_flag=True, help="Also write every step's state and denoised estimate (STEM_trajectory.npz) and a PNG strip of the denoised estimates.")
@click.option("--out", "out_path", default="samples.npz", show_default=True, help="FILE.npz (arrays samples, seeds; a PNG beside it) or FILE.png.")
def sample_command(
    preset: str,
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
    num_samples: int,
    seed: int,
    seeds: Optional[str],
    eta: Optional[float],
    alpha: Optional[float],
    beta: Optional[float],
    beta_schedule: Optional[str],
    trajectory: bool,
    out_path: str,
) -> None:
    """Sample the exact denoiser of a built-in data set with any preset and solver.

    The denoiser is the posterior mean of the data set under Gaussian noise, so
    the result shows the solver's error alone, with no network in the way.
    """
    import presets
    import samplers

    from . import data
    from .ideal import IdealDenoiser
    from .plotting import scatter_panels_png
    from .seeding import SeededNoise, parse_seeds

    f = presets.get(preset)
    solver = solver or f.default_solver
    samplers.get(solver)
    num_steps = f.default_steps if num_steps is None else num_steps
    extension = os.path.splitext(out_path)[1].lower()
    if extension not in (".npz", ".png"):
        raise ConfigError(f"--out {out_path!r} must end in .npz or .png")
    if seeds is not None:
        seed_list = parse_seeds(seeds)
    else:
        if num_samples < 1 or seed < 0:
            raise ConfigError(f"--n {num_samples} and --seed {seed} are invalid; need n >= 1 and seed >= 0")
        seed_list = list(range(seed, seed + num_samples))
    lo, hi = _float_or_none(sigma_min, "--sigma-min"), _float_or_none(sigma_max, "--sigma-max")
    # Validate the whole configuration before any work: the time steps carry every range check.
    samplers.time_steps(f, num_steps, discretization, lo, hi, rho=rho)

    dataset = data.load(data_name, n=data_size, seed=seed)
    denoiser = IdealDenoiser(dataset.to(torch.float64))
    noise = SeededNoise(seed_list)
    latents = noise.randn([len(seed_list), *dataset.shape[1:]], dtype=torch.float64)
    options = {key: value for key, value in (("eta", eta), ("alpha", alpha), ("beta", beta), ("beta_schedule", beta_schedule)) if value is not None}
    recorder = TrajectoryRecorder() if trajectory else None
    info: dict = {}
    x = samplers.sample(
        denoiser, latents, formulation=f, solver=solver, num_steps=num_steps, discretization=discretization,
        sigma_min=lo, sigma_max=hi, churn=churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise,
        randn_like=noise.randn_like, rho=rho, info=info, progress=True, callback=recorder, **options,
    )
    samples = x.numpy()
    if not np.isfinite(samples).all():
        raise ConfigError(f"sampling produced non-finite values ({preset}, {solver}, {num_steps} steps); try more steps")
    png_path = out_path if extension == ".png" else os.path.splitext(out_path)[0] + ".png"
    if extension == ".npz":
        from .files import save_npz_atomic

        save_npz_atomic(out_path, {"samples": samples, "seeds": np.asarray(seed_list, dtype=np.int64)})
    if samples.ndim == 2 and samples.shape[1] == 2:
        scatter_panels_png(png_path, [dataset.numpy(), samples])
    written = [out_path] + ([png_path] if png_path != out_path else [])
    if recorder is not None:
        written += recorder.save(os.path.splitext(out_path)[0] + "_trajectory")
    click.echo(
        f"{len(seed_list)} samples of {data_name} with {preset} + {solver}, {num_steps} steps, "
        f"{info['nfe']} denoiser evaluations -> {', '.join(written)}"
    )


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
