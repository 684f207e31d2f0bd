"""k-diffusion's calling conventions, both ways.

Every solver of this project as a k-diffusion sampler (Crowson's k-diffusion, k_diffusion.sampling):

    from edm_space.compat import k_diffusion as kd
    x = kd.sample_dpmpp_2m(model, x, sigmas, extra_args={"labels": y}, callback=None, disable=True)
    x = kd.get_sampler("unipc-3")(model, x, sigmas)

`model(x, sigma, **extra_args)` is a k-diffusion denoiser (x = x_0 + sigma eps, sigma a [batch] tensor, returns the
denoised estimate), `x` the starting state (noise times sigmas[0]) and `sigmas` the decreasing levels, usually
ending in 0. The solver integrates EDM's ODE (sigma(t) = t, s = 1: k-diffusion's) through exactly these levels;
`formulation=` picks another preset's ODE (its t and s) through the same levels. The names are those of
samplers.names() with "++" written "pp_" and "-" written "_" (dpm++2m -> sample_dpmpp_2m, unipc-3 -> sample_unipc_3).

The other way, any k-diffusion sampler drives a denoiser of this project (a trained Denoiser, IdealDenoiser, a
guided one): `k_diffusion.sampling.sample_heun(KDiffusionModel(denoiser), x, sigmas)`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Optional

import torch

import presets
import samplers

Tensor = torch.Tensor

__all__ = ["KDiffusionModel", "get_sampler", "sampler_name", "sampler_names", "sample"]


def sampler_name(solver: str) -> str:
    """The k-diffusion-style function name of a solver of this project: dpm++2m -> sample_dpmpp_2m."""
    return "sample_" + solver.replace("++", "pp_").replace("-", "_")


def sampler_names() -> List[str]:
    """The sample_* names of every registered solver."""
    return [sampler_name(name) for name in samplers.names()]


def sample(solver: str, model: Callable[..., Tensor], x: Tensor, sigmas: Tensor, extra_args: Optional[Dict[str, Any]] = None,
           callback: Optional[Callable[[Dict[str, Any]], None]] = None, disable: Optional[bool] = None, formulation="edm",
           randn_like: Callable[[Tensor], Tensor] = torch.randn_like, **solver_options) -> Tensor:
    """Run solver `solver` of this project with k-diffusion's arguments; returns the sample in x's dtype.

    callback receives k-diffusion's dict {x, i, sigma, sigma_hat, denoised} after every step; disable=False shows
    a progress bar (k-diffusion shows one unless disable is true; here none unless asked).
    """
    import presets
    extra_args = extra_args or {}
    dtype = x.dtype
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu()

    def denoiser(x_hat: Tensor, sigma: Tensor) -> Tensor:
        return model(x_hat.to(dtype), sigma.to(device=x_hat.device, dtype=dtype), **extra_args)

    def on_step(step, t, sigma, x_step, denoised):
        if callback is not None:
            callback({"x": x_step, "i": step, "sigma": sigmas[step], "sigma_hat": sigmas[step], "denoised": denoised})

    f = presets.get(formulation)
    # The sampler starts at latents * s(t_0) sigma(t_0), i.e. x_hat = latents * sigmas[0] = x in every formulation.
    start = float(sigmas[0]) if float(sigmas[0]) < float("inf") else 1.0
    latents = x.to(torch.float64) / start
    result = samplers.sample(denoiser, latents, formulation=f, solver=solver, discretization=sigmas, randn_like=randn_like,
                             callback=on_step if callback is not None else None, progress=disable is False, **solver_options)
    return result.to(dtype)


def get_sampler(solver: str) -> Callable[..., Tensor]:
    """The solver `solver` (a name of samplers.names()) as a k-diffusion sampler function."""
    samplers.get(solver)  # unknown names: one line listing the valid ones
    function = functools.partial(sample, solver)
    function.__name__ = sampler_name(solver)
    function.__doc__ = f"Solver {solver!r} of edm-space with k-diffusion's signature (model, x, sigmas, extra_args, callback, disable)."
    return function


def __getattr__(name: str) -> Callable[..., Tensor]:
    """sample_* names resolve to the registered solvers (also those registered after this module was imported)."""
    for solver in samplers.names():
        if sampler_name(solver) == name:
            return get_sampler(solver)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class KDiffusionModel(torch.nn.Module):
    """A denoiser of this project (D(x_hat, sigma[, labels])) as a k-diffusion model: model(x, sigma, **extra_args).

    sigma arrives in x's dtype; the denoiser gets float64 sigma (as every sampler here gives it) and extra_args
    as keywords (e.g. labels=). The result comes back in x's dtype.
    """

    def __init__(self, denoiser: Callable[..., Tensor]):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x: Tensor, sigma: Tensor, **extra_args) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        return self.denoiser(x, sigma, **extra_args).to(x.dtype)
