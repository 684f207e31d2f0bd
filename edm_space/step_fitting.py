"""Time steps fitted to a trained model (or an exact target) and written to FILE.json: `edm-space optimize-steps`.

    from edm_space.step_fitting import StepFit, fit_steps_to_file
    result = fit_steps_to_file(StepFit(solver="dpm++2m", nfe=6, out_path="steps.json", run_dir="runs/mnist"))

The steps minimize the error against the model's own probability-flow ODE solved to high accuracy
(scipy DOP853, edm_space.reference) on calibration latents (samplers.optimize does the fit); the error
before and after is scored on held-out latents, which the fit never sees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import torch

import presets
import samplers
from samplers.discretizations import load_levels
from samplers.optimize import endpoint_error, initial_levels, optimize_steps, save_levels, steps_to_fit

from . import data
from .errors import ConfigError
from .files import check_writable_file, remove_stale_temporaries
from .ideal import IdealDenoiser
from .reference import solve_reference
from .sampling import TOY_REFERENCE_SIZE
from .seeding import SeededNoise
from .training import load_trained

__all__ = ["StepFit", "fit_steps_to_file"]

# Bounds of the calibration and held-out latent counts.
MAX_LATENTS = 100_000


@dataclass
class StepFit:
    """What to fit: the solver and budget, the target (a run, else the exact denoiser of a data set), the
    starting levels and the latents; the result goes to out_path (FILE.json).

    A class-conditional run is fitted for one label: `class_label`, or without one the null label (the
    unconditional model its label dropout trained)."""

    solver: str
    nfe: int
    out_path: str
    run_dir: Optional[str] = None
    checkpoint_step: Optional[int] = None
    data_name: str = "moons"
    data_size: Optional[int] = None
    preset: Optional[str] = None
    solver_options: Dict[str, Any] = field(default_factory=dict)
    initial: str = "edm"
    analytic_first_step: bool = False
    sigma_min: float = 0.002
    sigma_max: Optional[float] = None
    calibration: int = 64
    held_out: int = 256
    seed: int = 0
    max_evaluations: int = 1000
    class_label: Optional[int] = None


def _check(fit: StepFit) -> Tuple[int, float]:
    """(steps to fit, sigma_max): every setting checked before any work."""
    if not fit.out_path.endswith(".json"):
        raise ConfigError(f"--out {fit.out_path!r} must end in .json")
    check_writable_file(fit.out_path, "--out")
    remove_stale_temporaries(os.path.dirname(os.path.abspath(fit.out_path)))  # left by a run killed while writing
    samplers.get(fit.solver).check_options(fit.solver_options)
    num_steps = steps_to_fit(fit.solver, fit.nfe, fit.analytic_first_step)  # a bad solver or budget fails at once
    sigma_max = fit.sigma_max
    if sigma_max is None:
        sigma_max = float(load_levels(fit.initial)[0]) if fit.initial.endswith(".json") else 80.0
    for name, value in (("--calibration", fit.calibration), ("--held-out", fit.held_out)):
        if not 1 <= value <= MAX_LATENTS:
            raise ConfigError(f"{name} {value} is invalid; it must be between 1 and {MAX_LATENTS:,}")
    return num_steps, sigma_max


def _target(fit: StepFit):
    """(denoiser, formulation, item shape, what it is, its training data or None): the run's model, or the exact
    denoiser of fit.data_name."""
    if fit.run_dir is not None:
        denoiser, config, item_shape, num_classes, step = load_trained(fit.run_dir, step=fit.checkpoint_step)
        f = presets.get(fit.preset) if fit.preset else denoiser.formulation
        if config.conditional:
            denoiser = _with_label(denoiser, num_classes, fit.class_label)
        elif fit.class_label is not None:
            raise ConfigError(f"--class-label {fit.class_label} is invalid: {fit.run_dir!r} is not class-conditional")
        training_data = data.load(config.data, n=config.data_size, seed=config.seed) if fit.analytic_first_step else None
        label = "" if not config.conditional else f", {'the null label' if fit.class_label is None else f'class {fit.class_label}'}"
        return denoiser, f, item_shape, f"{fit.run_dir} (step {step}{label})", training_data
    if fit.class_label is not None:
        raise ConfigError(f"--class-label {fit.class_label} is invalid without --ckpt: the exact denoisers fitted here are unconditional")
    size = fit.data_size if fit.data_size is not None else (TOY_REFERENCE_SIZE if fit.data_name in data.TOY_SETS else None)
    points = data.load(fit.data_name, n=size, seed=fit.seed)
    denoiser = IdealDenoiser(points.to(torch.float64))
    return denoiser, presets.get(fit.preset or "edm"), tuple(points.shape[1:]), f"the exact denoiser of {fit.data_name}", points


def _with_label(denoiser: Callable, num_classes: int, class_label: Optional[int]) -> Callable:
    """D(x; sigma) of a class-conditional denoiser for one label: class `class_label`, or the null label
    (all-zero one-hot, edm_space.guidance.null_labels) when it is None."""
    if class_label is not None and not 0 <= class_label < num_classes:
        raise ConfigError(f"--class-label {class_label} is invalid; the model has classes 0 to {num_classes - 1}")
    row = torch.zeros(1, num_classes, dtype=torch.float64)
    if class_label is not None:
        row[0, class_label] = 1.0
    return lambda x_hat, sigma: denoiser(x_hat, sigma, row.expand(len(x_hat), -1).to(x_hat))


def fit_steps_to_file(fit: StepFit, echo: Callable[[str], None] = lambda line: None,
                      log: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Fit the levels (samplers.optimize.optimize_steps), score them on held-out latents and write fit.out_path.

    `echo` receives a line before the reference solve, `log` the fit's progress. Returns nfe, formulation,
    the held-out RMS errors before and after, and the number of held-out latents.
    """
    num_steps, sigma_max = _check(fit)
    denoiser, f, item_shape, source, training_data = _target(fit)
    if not sigma_max <= f.support[1]:
        raise ConfigError(f"--sigma-max {sigma_max:g} is beyond what the {f.name} preset supports (<= {f.support[1]:g})")
    initial_levels(f, num_steps, fit.initial, fit.sigma_min, sigma_max)  # a bad --discretization fails before the reference solve
    sampling = dict(fit.solver_options)
    if fit.analytic_first_step:  # D(x; sigma -> inf) is the mean of the data the model learned
        sampling.update(analytic_first_step=True, data_mean=training_data.to(torch.float64).mean(dim=0))
    seeds = list(range(fit.seed, fit.seed + fit.calibration + fit.held_out))
    latents = SeededNoise(seeds).randn([len(seeds), *item_shape], dtype=torch.float64)
    sigma_end = min(1e-4, fit.sigma_min / 10)

    def finish(x_hat, sigma):  # the last step of a sampler into sigma = 0 is a denoiser call
        return denoiser(x_hat, torch.full((len(x_hat),), sigma, dtype=torch.float64))

    echo(f"solving the probability-flow ODE of {source} for {len(seeds)} latents (DOP853, rtol 1e-8) ...")
    calibration = fit.calibration
    with torch.no_grad():
        reference = solve_reference(denoiser, latents, sigma_0=sigma_max, sigma_end=sigma_end, rtol=1e-8, finish=finish).x
        fitted = optimize_steps(denoiser, f, fit.solver, fit.nfe, latents[:calibration], reference[:calibration], sigma_min=fit.sigma_min,
                                sigma_max=sigma_max, max_evaluations=fit.max_evaluations, log=log, initial=fit.initial,
                                solver_options=fit.solver_options, analytic_first_step=fit.analytic_first_step,
                                data_mean=sampling.get("data_mean"))
        held = latents[calibration:], reference[calibration:], f, fit.solver
        before = endpoint_error(denoiser, *held, fitted.initial_sigmas, **sampling)
        after = endpoint_error(denoiser, *held, fitted.sigmas, **sampling)
    save_levels(fit.out_path, fitted.sigmas, solver=fit.solver, nfe=fitted.nfe, formulation=f.name, source=source,
                solver_options=fit.solver_options, analytic_first_step=fit.analytic_first_step, initial=fit.initial,
                held_out_error_before=before, held_out_error_after=after)
    return {"nfe": fitted.nfe, "formulation": f.name, "before": before, "after": after, "held_out": len(seeds) - calibration,
            "sigmas": fitted.sigmas}
