"""The exact end point of the probability-flow ODE, to score samplers against.

    from edm_space.reference import solve_reference, rms_error
    ref = solve_reference(denoiser, latents, sigma_0=80.0, sigma_end=1e-7)
    error = rms_error(samples, ref.x)

For any denoiser D(x_hat; sigma) (an exact one from `edm_space.ideal`, or a
trained network) the probability-flow ODE in the unscaled x_hat = x / s(t) and
sigma does not depend on the formulation (EDM eq. 4 with s = 1, sigma(t) = t):

    dx_hat/dsigma = (x_hat - D(x_hat; sigma)) / sigma.

In u = ln sigma it reads dx_hat/du = x_hat - D(x_hat; e^u), a system whose time
scale is O(1) in u at every noise level, so a high-order adaptive integrator
(scipy's DOP853) solves it to a tight tolerance in a few hundred steps. A sampler
started at x_hat = z sigma_0 is scored against the solution started at the same
point. The integration stops at sigma_end > 0 (D may be singular at 0); `finish`
maps x(sigma_end) to x(0) where the caller knows how (e.g. snapping to the
training point on a finite data set; `edm_space.targets.Target.finish`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import numpy as np
import torch
from scipy.integrate import solve_ivp

from .errors import ConfigError
from .parameterization import F64

Tensor = torch.Tensor
Denoiser = Callable[[Tensor, Tensor], Tensor]
Finish = Callable[[Tensor, float], Tensor]

__all__ = ["ReferenceSolution", "solve_reference", "compare_solutions", "rms_error"]


@dataclass
class ReferenceSolution:
    """The PF-ODE end points x(0) of a batch of latents started at x_hat = z sigma_0.

    x has the shape of the latents (float64); nfev counts denoiser calls (each on a
    whole chunk of the batch) and steps the accepted DOP853 steps, summed over chunks.
    """

    x: Tensor
    sigma_0: float
    sigma_end: float
    rtol: float
    atol: float
    nfev: int
    steps: int
    seconds: float


def solve_reference(
    denoiser: Denoiser,
    latents: Tensor,
    sigma_0: float,
    sigma_end: float,
    rtol: float = 1e-10,
    atol: Optional[float] = None,
    finish: Optional[Finish] = None,
    chunk: Optional[int] = None,
) -> ReferenceSolution:
    """Integrate dx_hat/du = x_hat - D(x_hat; e^u), u = ln sigma, from x_hat = z sigma_0 down to ln sigma_end.

    The samples of a chunk form one state vector (one call of D per stage for the
    whole chunk); `chunk` samples per solve bound the memory on large inputs.
    DOP853's error control uses the RMS over the state, so the tolerance holds on
    average over a chunk; `compare_solutions` against a solve at a tighter tolerance
    reports the largest deviation.
    `finish(x_hat, sigma_end)`, when given, maps the state at sigma_end to x(0);
    without it the state at sigma_end is returned.
    """
    sigma_0, sigma_end = float(sigma_0), float(sigma_end)
    atol = rtol if atol is None else float(atol)
    if not (0 < sigma_end < sigma_0 < math.inf):
        raise ConfigError(f"the reference needs 0 < sigma_end < sigma_0 < inf; got {sigma_end:g}, {sigma_0:g}")
    if not isinstance(latents, Tensor) or latents.ndim < 2 or latents.shape[0] < 1:
        raise ConfigError("latents must be a tensor of shape [batch, ...] with batch >= 1")
    item_shape = tuple(latents.shape[1:])
    z = latents.to(F64).reshape(latents.shape[0], -1)
    batch = z.shape[0]
    chunk = batch if chunk is None else max(1, int(chunk))
    out = torch.empty_like(z)
    nfev = steps = 0
    start = time.perf_counter()
    for first in range(0, batch, chunk):
        rows = min(chunk, batch - first)
        shape = (rows, *item_shape)

        def rhs(u: float, y: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(y).view(shape)
            sigma = torch.full((rows,), math.exp(u), dtype=F64)
            return (x - denoiser(x, sigma).to(F64)).reshape(-1).numpy()

        solution = solve_ivp(
            rhs, (math.log(sigma_0), math.log(sigma_end)), (z[first : first + rows] * sigma_0).reshape(-1).numpy(),
            method="DOP853", rtol=rtol, atol=atol,
        )
        if solution.status != 0:
            raise RuntimeError(f"the reference ODE solve failed: {solution.message}")
        x_end = torch.from_numpy(np.ascontiguousarray(solution.y[:, -1])).view(shape)
        if finish is not None:
            x_end = finish(x_end, sigma_end).to(F64)
        out[first : first + rows] = x_end.reshape(rows, -1)
        nfev += int(solution.nfev)
        steps += len(solution.t) - 1
    return ReferenceSolution(out.reshape(latents.shape), sigma_0, sigma_end, rtol, atol, nfev, steps, time.perf_counter() - start)


def compare_solutions(a: ReferenceSolution, b: ReferenceSolution) -> Dict[str, float]:
    """How far apart two solutions of the same latents are (units of x), e.g. at rtol and rtol / 2:
    the RMS over everything, the largest per-sample RMS, and the largest coordinate difference."""
    if a.x.shape != b.x.shape:
        raise ConfigError(f"the solutions differ in shape: {list(a.x.shape)} and {list(b.x.shape)}")
    diff = (a.x - b.x).reshape(a.x.shape[0], -1)
    return {
        "rms_difference": float(diff.pow(2).mean().sqrt()),
        "max_sample_rms_difference": float(diff.pow(2).mean(dim=1).sqrt().max()),
        "max_abs_difference": float(diff.abs().max()),
    }


def rms_error(x: Tensor, reference: Tensor) -> float:
    """RMS over samples of |x - x_ref| / sqrt(dim): sqrt of the mean over samples and coordinates of (x - x_ref)^2."""
    return float((x.to(F64) - reference.to(F64)).pow(2).mean().sqrt())
