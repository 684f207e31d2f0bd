"""Time discretizations and ODE/SDE solvers for any formulation.

    import presets, samplers
    x = samplers.sample(denoiser, latents, formulation=presets.get("edm"), solver="heun", num_steps=18)

`denoiser` is any callable D(x_hat, sigma) -> estimate of x_0, with sigma a
float64 tensor of shape [batch]. The sampler's state is float64; the samples
are returned at t = 0 in float64 with the shape of `latents`.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Callable, Optional, Union

import torch

from edm_space.errors import ConfigError
from edm_space.parameterization import F64, Formulation

from . import edm as _edm  # noqa: F401  (registers euler, heun; order of import = order of names())
from . import ancestral as _ancestral  # noqa: F401  (registers ddim, ancestral)
from . import sde as _sde  # noqa: F401  (registers euler-maruyama)
from . import dpm as _dpm  # noqa: F401  (registers dpm++2m, dpm++3m, dpm++2s)
from .discretizations import time_steps
from .discretizations import names as discretization_names
from .ode import ProbabilityFlow
from .registry import SOLVERS, SolverInfo, get, names, register

Tensor = torch.Tensor

__all__ = [
    "sample",
    "names",
    "discretization_names",
    "time_steps",
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
    """
    import presets  # late import: presets depends on edm_space only

    f = presets.get(formulation)
    entry = get(solver)
    options = dict(solver_options)
    for key, value, default in (("churn", churn, 0.0), ("s_tmin", s_tmin, 0.0), ("s_tmax", s_tmax, math.inf), ("s_noise", s_noise, 1.0)):
        if value != default:
            options[key] = float(value)
    _check_options(entry, options)
    if churn < 0:
        raise ConfigError(f"churn = {churn!r} is invalid; it must be >= 0")
    if not isinstance(latents, torch.Tensor) or latents.ndim < 1 or latents.shape[0] < 1:
        raise ConfigError("latents must be a tensor of shape [batch, ...] with batch >= 1")

    t_steps = time_steps(f, num_steps, discretization, sigma_min, sigma_max, rho=rho)
    ode = ProbabilityFlow(f, denoiser)
    ode.precompute(t_steps)
    x = latents.to(F64) * (f.sigma(t_steps[0]) * f.scale(t_steps[0])).to(latents.device)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, desc=f"{solver} x {num_steps}", unit="step", leave=False)

    def on_step(step, t, sigma, x_step, denoised):
        if bar is not None:
            bar.update(1)
            bar.set_postfix(nfe=ode.nfe, sigma=f"{float(sigma):.3g}")
        if callback is not None:
            callback(step, t, sigma, x_step, denoised)

    wants_callback = bar is not None or callback is not None
    try:
        x = entry.fn(ode, x, t_steps, randn_like=randn_like, callback=on_step if wants_callback else None, **options)
    finally:
        if bar is not None:
            bar.close()
    if info is not None:
        info.update(nfe=ode.nfe, t_steps=t_steps, sigma_steps=f.sigma(t_steps), solver=solver, formulation=f.name)
    return x


@functools.lru_cache(maxsize=None)
def _accepted_options(entry: SolverInfo) -> tuple:
    parameters = inspect.signature(entry.fn).parameters
    structural = ("randn_like", "callback", "second_order", "order")  # fixed by the registered variant
    return tuple(name for name, p in parameters.items() if p.kind == p.KEYWORD_ONLY and name not in structural)


def _check_options(entry: SolverInfo, options: dict) -> None:
    accepted = _accepted_options(entry)
    for key in options:
        if key not in accepted:
            raise ConfigError(f"solver {entry.name!r} takes no option {key!r}; its options: {', '.join(accepted) or 'none'}")
