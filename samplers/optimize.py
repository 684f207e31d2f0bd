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
gives strictly decreasing positive levels. They start at EDM's rho = 7 levels
(Karras et al. 2022, eq. 5) and are fitted with Nelder-Mead (derivative-free) to
minimize the log of the RMS end-point error against the exact probability-flow
end points of the calibration latents. The sampler appends sigma_N = 0.

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
from dataclasses import dataclass
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
from .discretizations import edm_sigmas
from .registry import get

Tensor = torch.Tensor

__all__ = ["OptimizedSteps", "optimize_steps", "steps_to_fit", "endpoint_error", "levels_from_parameters", "parameters_from_levels", "save_levels"]

#: The objective of a run that fails or blows up: ln(error) of e^50, worse than any real run.
FAILED_RUN = 50.0


@dataclass
class OptimizedSteps:
    """The fitted levels and what they did on the calibration latents.

    sigmas: the N levels sigma_0 = sigma_max > ... > sigma_{N-1} > 0 (float64; sigma_N = 0 is implied).
    initial_sigmas: EDM's rho-levels the fit started from. error_before / error_after: the RMS
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


def steps_to_fit(solver: str, nfe: int) -> int:
    """The steps of `solver` within `nfe` evaluations; a ConfigError if it is stochastic or leaves fewer than 2 steps."""
    entry = get(solver)
    if entry.stochastic:
        raise ConfigError(f"solver {solver!r} is stochastic; step optimization needs a deterministic solver")
    num_steps = entry.steps_for_nfe(int(nfe))
    if num_steps < 2:
        raise ConfigError(f"an NFE budget of {nfe} leaves {solver} {num_steps} step; optimizing needs at least 2")
    return num_steps


def endpoint_error(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    latents: Tensor,
    reference: Tensor,
    formulation: Union[Formulation, str],
    solver: str,
    sigmas: Union[Tensor, Sequence[float]],
) -> float:
    """RMS error of `solver` on the levels `sigmas` (formulation's own ODE) against the reference end points."""
    x = sample(denoiser, latents, formulation=formulation, solver=solver, discretization=torch.as_tensor(sigmas, dtype=F64))
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
) -> OptimizedSteps:
    """Fit the N - 1 free levels below sigma_max of `solver` within `nfe` evaluations on calibration latents.

    `reference` holds the exact PF-ODE end points of `latents` started at x_hat = z sigma_max
    (edm_space.reference.solve_reference with sigma_0 = sigma_max). The run integrates the
    formulation's own ODE (exponential integrators do not depend on it). sigma_min and rho set
    the starting levels (EDM eq. 5); `max_evaluations` bounds the sampling runs of the fit.
    """
    f = presets.get(formulation)
    entry = get(solver)
    num_steps = steps_to_fit(solver, nfe)
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ConfigError(f"the sigma range must satisfy 0 < sigma_min < sigma_max < inf; got [{sigma_min:g}, {sigma_max:g}]")
    if not sigma_max <= f.support[1]:
        raise ConfigError(f"sigma_max = {sigma_max:g} is beyond what the {f.name} preset supports (<= {f.support[1]:g})")
    if tuple(reference.shape) != tuple(latents.shape):
        raise ConfigError(f"the reference has shape {list(reference.shape)}; it must match the latents' {list(latents.shape)}")
    if max_evaluations < 1:
        raise ConfigError(f"max_evaluations = {max_evaluations} is invalid; it must be >= 1")

    start = time.perf_counter()
    initial = edm_sigmas(num_steps, sigma_min, sigma_max, rho).numpy()
    errors = {}  # the error of every evaluated parameter vector, by its bytes
    runs = [0]

    def objective(p: np.ndarray) -> float:
        runs[0] += 1
        levels = levels_from_parameters(p, sigma_max)
        if not np.all(np.isfinite(levels)) or levels[-1] <= 0 or not np.all(np.diff(levels) < 0):
            return FAILED_RUN
        try:
            error = endpoint_error(denoiser, latents, reference, f, solver, torch.from_numpy(levels))
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
        solver=solver, formulation=f.name, nfe=entry.nfe(num_steps), num_steps=num_steps,
        sigmas=torch.from_numpy(levels), initial_sigmas=torch.from_numpy(initial),
        error_before=errors.get(p0.tobytes(), math.inf), error_after=errors.get(best.tobytes(), math.inf),
        objective_evaluations=runs[0], converged=bool(result.success), seconds=time.perf_counter() - start,
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
