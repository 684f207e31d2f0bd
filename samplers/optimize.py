"""Time steps fitted to a solver and an NFE budget: the noise levels that minimize the error against the exact ODE.

    from edm_space.reference import solve_reference
    from samplers.optimize import optimize_steps, save_levels

    ref = solve_reference(denoiser, calibration, sigma_0=80.0, sigma_end=1e-7)
    fit = optimize_steps(denoiser, "edm", "dpm++2m", 10, calibration, ref.x)
    save_levels("steps.json", fit.sigmas)       # samplers.sample(..., discretization="steps.json")

For a deterministic solver and a budget of NFE denoiser evaluations, the run has
N = samplers.get(solver).steps_for_nfe(NFE) steps. The first level is fixed at
sigma_max (the calibration's reference starts there); the N - 1 levels below it
are free, written as ln sigma_i = ln sigma_{i-1} - softplus(p_i), so that any p
gives strictly decreasing positive levels. They start at any discretization
(`initial`: a name, explicit levels or a FILE.json; default EDM's rho = 7 levels,
Karras et al. 2022, eq. 5) and are fitted with Nelder-Mead (derivative-free) to
minimize the log of the RMS end-point error against the exact probability-flow
end points of the calibration latents. The sampler appends sigma_N = 0.
Solver options (e.g. taylor=True for dpm++3m) and the analytical first step
(which saves one evaluation, so a budget of NFE buys the steps of NFE + 1) are
passed to every sampling run of the fit.

The fit only sees the calibration latents; score the levels on other latents
(`endpoint_error`) to know whether they generalize. On a smooth data law the
error is a smooth function of the levels; on a finite training set it is nearly
piecewise constant (a sample lands on one training point or another) and the fit
gains little.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from scipy.optimize import minimize

import presets
from edm_space.errors import ConfigError
from edm_space.files import write_atomic
from edm_space.parameterization import F64, Formulation
from edm_space.reference import rms_error

from . import sample
from .discretizations import edm_sigmas, time_steps
from .registry import get

Tensor = torch.Tensor

__all__ = ["OptimizedSteps", "optimize_steps", "steps_to_fit", "initial_levels", "endpoint_error", "levels_from_parameters", "parameters_from_levels", "save_levels"]

#: The objective of a run that fails or blows up: ln(error) of e^50, worse than any real run.
FAILED_RUN = 50.0
#: The largest NFE budget a fit takes: Nelder-Mead in N - 1 dimensions gains nothing beyond a few dozen steps.
MAX_NFE = 1000


@dataclass
class OptimizedSteps:
    """The fitted levels and what they did on the calibration latents.

    sigmas: the N levels sigma_0 = sigma_max > ... > sigma_{N-1} > 0 (float64; sigma_N = 0 is implied).
    initial_sigmas: the levels the fit started from. error_before / error_after: the RMS
    end-point error (edm_space.reference.rms_error) of the initial and the fitted levels on the
    calibration latents.
    """

    solver: str
    formulation: str
    nfe: int
    num_steps: int
    sigmas: Tensor
    initial_sigmas: Tensor
    error_before: float
    error_after: float
    objective_evaluations: int
    converged: bool
    seconds: float
    sample_options: dict = field(default_factory=dict)


def levels_from_parameters(p: Sequence[float], sigma_max: float) -> np.ndarray:
    """sigma_0 = sigma_max, ln sigma_i = ln sigma_{i-1} - softplus(p_i): strictly decreasing for any p."""
    softplus = np.logaddexp(0.0, np.asarray(p, dtype=np.float64))
    levels = np.exp(math.log(sigma_max) - np.concatenate([[0.0], np.cumsum(softplus)]))
    levels[0] = sigma_max  # exactly, so that the reference started at sigma_max applies
    return levels


def parameters_from_levels(levels: Sequence[float]) -> np.ndarray:
    """The p of `levels_from_parameters` for strictly decreasing positive levels (softplus^-1 of the log gaps)."""
    logs = np.log(np.asarray(levels, dtype=np.float64))
    gaps = logs[:-1] - logs[1:]
    return gaps + np.log(-np.expm1(-gaps))


def steps_to_fit(solver: str, nfe: int, analytic_first_step: bool = False) -> int:
    """The steps of `solver` within `nfe` evaluations (one more with the analytical first step, which saves one);
    a ConfigError if it is stochastic, `nfe` is beyond MAX_NFE, or it leaves fewer than 2 steps."""
    entry = get(solver)
    if entry.stochastic:
        raise ConfigError(f"solver {solver!r} is stochastic; step optimization needs a deterministic solver")
    if not 1 <= int(nfe) <= MAX_NFE:
        raise ConfigError(f"an NFE budget of {nfe} is invalid; step optimization takes 1 to {MAX_NFE} evaluations")
    num_steps = entry.steps_for_nfe(int(nfe) + int(analytic_first_step))
    if num_steps < 2:
        raise ConfigError(f"an NFE budget of {nfe} leaves {solver} {num_steps} step; optimizing needs at least 2")
    return num_steps


def initial_levels(
    formulation: Formulation,
    num_steps: int,
    initial: Union[None, str, Tensor, Sequence[float], np.ndarray],
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
) -> np.ndarray:
    """The N levels a fit starts from: a discretization name on [sigma_min, sigma_max] (default "edm" with `rho`),
    or explicit levels / a FILE.json, which must hold N levels starting at sigma_max (a final 0 is dropped)."""
    if initial is None:
        return edm_sigmas(num_steps, sigma_min, sigma_max, rho).numpy()
    if isinstance(initial, str) and not initial.endswith(".json"):
        t = time_steps(formulation, num_steps, initial, sigma_min, sigma_max, rho=rho)
    elif isinstance(initial, str):
        t = time_steps(formulation, num_steps, initial)
    else:
        t = time_steps(formulation, num_steps, torch.as_tensor(np.asarray(initial, dtype=np.float64)))
    levels = formulation.sigma(t[:-1]).numpy().copy()
    what = initial if isinstance(initial, str) else "the initial levels"
    if len(levels) != num_steps:
        raise ConfigError(f"{what} holds {len(levels)} levels; the fit needs {num_steps} (the steps of its NFE budget)")
    if not math.isclose(levels[0], sigma_max, rel_tol=1e-6):
        raise ConfigError(f"{what} starts at sigma {levels[0]:g}; the fit keeps sigma_max = {sigma_max:g} fixed: start there")
    levels[0] = sigma_max
    return levels


def endpoint_error(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    latents: Tensor,
    reference: Tensor,
    formulation: Union[Formulation, str],
    solver: str,
    sigmas: Union[Tensor, Sequence[float]],
    **sample_options,
) -> float:
    """RMS error of `solver` on the levels `sigmas` (formulation's own ODE) against the reference end points;
    `sample_options` go to samplers.sample (solver options, analytic_first_step, data_mean)."""
    x = sample(denoiser, latents, formulation=formulation, solver=solver, discretization=torch.as_tensor(sigmas, dtype=F64),
               **sample_options)
    return rms_error(x, reference)


def optimize_steps(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    formulation: Union[Formulation, str],
    solver: str,
    nfe: int,
    latents: Tensor,
    reference: Tensor,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    max_evaluations: int = 1500,
    log: Optional[Callable[[str], None]] = None,
    *,
    initial: Union[None, str, Tensor, Sequence[float]] = None,
    solver_options: Optional[dict] = None,
    analytic_first_step: bool = False,
    data_mean: Optional[Union[float, Tensor]] = None,
) -> OptimizedSteps:
    """Fit the N - 1 free levels below sigma_max of `solver` within `nfe` evaluations on calibration latents.

    `reference` holds the exact PF-ODE end points of `latents` started at x_hat = z sigma_max
    (edm_space.reference.solve_reference with sigma_0 = sigma_max). The run integrates the
    formulation's own ODE (exponential integrators do not depend on it). `initial` sets the
    starting levels (`initial_levels`; default EDM eq. 5 on [sigma_min, sigma_max] with rho);
    `solver_options`, analytic_first_step and data_mean go to every samplers.sample run;
    `max_evaluations` bounds the sampling runs of the fit.
    """
    f = presets.get(formulation)
    entry = get(solver)
    num_steps = steps_to_fit(solver, nfe, analytic_first_step)
    options = dict(solver_options or {})
    entry.check_options(options)
    if analytic_first_step:
        options.update(analytic_first_step=True, data_mean=data_mean)
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ConfigError(f"the sigma range must satisfy 0 < sigma_min < sigma_max < inf; got [{sigma_min:g}, {sigma_max:g}]")
    if not sigma_max <= f.support[1]:
        raise ConfigError(f"sigma_max = {sigma_max:g} is beyond what the {f.name} preset supports (<= {f.support[1]:g})")
    if tuple(reference.shape) != tuple(latents.shape):
        raise ConfigError(f"the reference has shape {list(reference.shape)}; it must match the latents' {list(latents.shape)}")
    if max_evaluations < 1:
        raise ConfigError(f"max_evaluations = {max_evaluations} is invalid; it must be >= 1")

    start = time.perf_counter()
    initial = initial_levels(f, num_steps, initial, sigma_min, sigma_max, rho)
    errors = {}  # the error of every evaluated parameter vector, by its bytes
    runs = [0]

    def objective(p: np.ndarray) -> float:
        runs[0] += 1
        levels = levels_from_parameters(p, sigma_max)
        if not np.all(np.isfinite(levels)) or levels[-1] <= 0 or not np.all(np.diff(levels) < 0):
            return FAILED_RUN
        try:
            error = endpoint_error(denoiser, latents, reference, f, solver, torch.from_numpy(levels), **options)
        except (ValueError, RuntimeError):  # e.g. a mixture's responsibilities underflowing after a blow-up
            return FAILED_RUN
        errors[p.tobytes()] = error
        return math.log(error) if math.isfinite(error) and error > 0 else FAILED_RUN

    p0 = parameters_from_levels(initial)
    value_before = objective(p0)
    result = minimize(objective, p0, method="Nelder-Mead",
                      options={"maxfev": max_evaluations, "xatol": 1e-5, "fatol": 1e-7, "adaptive": True})
    best = result.x if result.fun < value_before else p0
    levels = levels_from_parameters(best, sigma_max)
    fit = OptimizedSteps(
        solver=solver, formulation=f.name, nfe=entry.nfe(num_steps) - int(analytic_first_step), num_steps=num_steps,
        sigmas=torch.from_numpy(levels), initial_sigmas=torch.from_numpy(initial),
        error_before=errors.get(p0.tobytes(), math.inf), error_after=errors.get(best.tobytes(), math.inf),
        objective_evaluations=runs[0], converged=bool(result.success), seconds=time.perf_counter() - start,
        sample_options=options,
    )
    if log is not None:
        log(f"  optimized {solver} N = {num_steps} (NFE {fit.nfe}): calibration error {fit.error_before:.3g} -> "
            f"{fit.error_after:.3g}, {fit.objective_evaluations} runs, {fit.seconds:.0f} s")
    return fit


def save_levels(path: "str | os.PathLike[str]", sigmas: Union[Tensor, Sequence[float]], **details) -> str:
    """Write {"sigmas": [...], **details} as JSON atomically: the file samplers.sample(discretization=PATH) reads."""
    payload = {"sigmas": [float(s) for s in torch.as_tensor(sigmas, dtype=F64).flatten()], **details}
    write_atomic(path, (json.dumps(payload, indent=1) + "\n").encode())
    return os.fspath(path)
