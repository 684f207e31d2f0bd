"""Time discretizations and ODE/SDE solvers for any formulation.

    import presets, samplers
    x = samplers.sample(denoiser, latents, formulation=presets.get("edm"), solver="heun", num_steps=18)

`denoiser` is any callable D(x_hat, sigma) -> estimate of x_0, with sigma a
float64 tensor of shape [batch]. The sampler's state is float64; the samples
are returned at t = 0 in float64 with the shape of `latents`.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch

import presets
from edm_space.errors import ConfigError
from edm_space.parameterization import F64, Formulation

from . import edm as _edm  # noqa: F401  (registers euler, heun; order of import = order of names())
from . import ancestral as _ancestral  # noqa: F401  (registers ddim, ancestral)
from . import sde as _sde  # noqa: F401  (registers euler-maruyama)
from . import dpm as _dpm  # noqa: F401  (registers dpm++2m, dpm++3m, dpm++2s)
from . import ipndm as _ipndm  # noqa: F401  (registers ipndm, ipndm-v)
from . import unipc as _unipc  # noqa: F401  (registers unipc-2, unipc-3)
from . import deis as _deis  # noqa: F401  (registers deis)
from .discretizations import FINAL_STEPS, check_final_step, time_steps
from .discretizations import names as discretization_names
from .ode import ProbabilityFlow
from .registry import SOLVERS, SolverInfo, get, names, register

Tensor = torch.Tensor

__all__ = [
    "sample",
    "names",
    "discretization_names",
    "time_steps",
    "FINAL_STEPS",
    "register",
    "get",
    "SOLVERS",
    "SolverInfo",
    "ProbabilityFlow",
]


def sample(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    latents: Tensor,
    formulation: Union[Formulation, str] = "edm",
    solver: str = "heun",
    num_steps: int = 18,
    discretization: Optional[str] = None,
    sigma_min: Optional[float] = None,
    sigma_max: Optional[float] = None,
    churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    randn_like: Callable[[Tensor], Tensor] = torch.randn_like,
    *,
    rho: float = 7.0,
    final_step: str = "solver",
    analytic_first_step: bool = False,
    data_mean: Optional[Union[float, Tensor]] = None,
    state_dtype: torch.dtype = F64,
    callback: Optional[Callable] = None,
    info: Optional[dict] = None,
    progress: bool = False,
    **solver_options,
) -> Tensor:
    """Integrate from pure noise (t_0) to data (t_N = 0) with a registered solver.

    The state starts at x = latents * s(t_0) * sigma(t_0). `discretization`
    defaults to the formulation's own; sigma_min / sigma_max to the
    discretization's own range, clipped to what the formulation supports.
    churn, s_tmin, s_tmax, s_noise are EDM's stochastic churn (solvers euler,
    heun). Further keyword options go to the solver (e.g. alpha for heun, eta
    for ddim). If `info` is a dict it receives nfe (denoiser evaluations),
    t_steps and sigma_steps. `callback(step, t, sigma, x, denoised)` is called
    after every step.

    final_step="denoise" lets the solver integrate only to sigma_min = sigma(t_{N-1})
    and ends with x = D(x; sigma_min) (one denoiser call; DPM-Solver's denoise_to_zero,
    see samplers.discretizations); the default "solver" lets the solver step into t = 0.
    analytic_first_step=True replaces the first denoiser call, at sigma_max, by its
    sigma -> inf limit `data_mean` (default 0; a number or a tensor that broadcasts to
    one item), saving one evaluation (Zhou et al. 2024, AMED's analytical first step).
    state_dtype is the dtype of the sampler's state (float64; float32 where float64 is slow, e.g. on
    consumer GPUs, at the price of round-off near sigma_min).
    """
    f = presets.get(formulation)
    entry = get(solver)
    options = dict(solver_options)
    for key, value, default in (("churn", churn, 0.0), ("s_tmin", s_tmin, 0.0), ("s_tmax", s_tmax, math.inf), ("s_noise", s_noise, 1.0)):
        if value != default:
            options[key] = float(value)
    entry.check_options(options)
    for name, value in (("churn", churn), ("s_noise", s_noise)):
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{name} = {value!r} is invalid; it must be a finite number >= 0")
    _check_latents(latents)

    check_final_step(final_step)
    first_denoised = _first_denoised(latents, analytic_first_step, data_mean)

    t_steps = time_steps(f, num_steps, discretization, sigma_min, sigma_max, rho=rho)
    ode = ProbabilityFlow(f, denoiser, first_denoised)
    ode.precompute(t_steps)
    if state_dtype not in (torch.float64, torch.float32):
        raise ConfigError(f"state_dtype = {state_dtype!r} is invalid; valid: torch.float64, torch.float32")
    x = latents.to(state_dtype) * (f.sigma(t_steps[0]) * f.scale(t_steps[0])).to(device=latents.device, dtype=state_dtype)

    bar = _progress_bar(num_steps, solver) if progress else None

    def on_step(step, t, sigma, x_step, denoised):
        if bar is not None:  # the step's numbers first, then one refresh that shows them
            bar.set_postfix(nfe=ode.nfe, sigma=f"{float(sigma):.3g}", refresh=False)
            bar.update(1)
        if callback is not None:
            callback(step, t, sigma, x_step, denoised)

    wants_callback = bar is not None or callback is not None
    try:
        solver_steps = t_steps[:-1] if final_step == "denoise" else t_steps
        x = entry.fn(ode, x, solver_steps, randn_like=randn_like, callback=on_step if wants_callback else None, **options)
        if final_step == "denoise":
            # The jump from sigma_min to 0: x_hat = D(x_hat; sigma_min), at t_N = 0 scaled by s(0).
            t_last = solver_steps[-1]
            denoised = ode.denoise(x, t_last)
            x = denoised * f.scale(t_steps[-1])
            if wants_callback:
                on_step(len(t_steps) - 2, t_last, f.sigma(t_last), x, denoised)
    finally:
        if bar is not None:
            bar.close()
    if info is not None:
        info.update(nfe=ode.nfe, t_steps=t_steps, sigma_steps=f.sigma(t_steps), solver=entry.name, formulation=f.name)  # an alias gives its solver
    return x


def _check_latents(latents: Tensor) -> None:
    """Latents must be a finite tensor [batch, ...] with batch >= 1; the rows that are not finite are named."""
    if not isinstance(latents, torch.Tensor) or latents.ndim < 1 or latents.shape[0] < 1:
        raise ConfigError("latents must be a tensor of shape [batch, ...] with batch >= 1")
    bad = (~torch.isfinite(latents.reshape(len(latents), -1)).all(dim=1)).nonzero().flatten().tolist()
    if bad:
        rows = ", ".join(map(str, bad[:8])) + (" ..." if len(bad) > 8 else "")
        raise ConfigError(f"latents have non-finite values (NaN or inf) in {len(bad)} of {len(latents)} rows: {rows}")


def _progress_bar(num_steps: int, solver: str):
    """A tqdm bar over the steps, cleared when sampling ends."""
    from tqdm.auto import tqdm

    return tqdm(total=num_steps, desc=f"{solver} x {num_steps}", unit="step", leave=False)


def _first_denoised(latents: Tensor, analytic_first_step: bool, data_mean) -> Optional[Tensor]:
    """The analytical first step's denoised value (data_mean, default 0) as a float64 tensor, or None."""
    if not analytic_first_step:
        if data_mean is not None:
            raise ConfigError("data_mean is used only with analytic_first_step=True")
        return None
    mean = torch.as_tensor(0.0 if data_mean is None else data_mean, dtype=F64)
    item = tuple(latents.shape[1:])
    try:
        fits = torch.broadcast_shapes(mean.shape, item) == item
    except RuntimeError:
        fits = False
    if not fits:
        raise ConfigError(f"data_mean of shape {tuple(mean.shape)} does not broadcast to one item of shape {item}")
    return mean
