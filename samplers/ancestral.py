"""DDIM(eta) and ancestral sampling, written in the unscaled x_hat = x / s and sigma.

In x_hat, DDIM's update (Song et al. 2021a, eq. 12) from sigma to sigma_next is
a deterministic move to sigma_down followed by fresh noise of size sigma_up:

    sigma_up   = min(sigma_next, eta * sigma_next * sqrt(sigma^2 - sigma_next^2) / sigma)
    sigma_down = sqrt(sigma_next^2 - sigma_up^2)
    x_hat'     = x_hat + (sigma_down - sigma) (x_hat - D) / sigma + sigma_up z

eta = 0 is Euler's method on sigma(t) = t, s(t) = 1 (EDM, Appendix B.3); eta = 1
is DDPM's ancestral step with the posterior variance beta-tilde (Ho et al. 2020,
eq. 7; Song et al. 2021a, Sec. 4.1). The result is rescaled by s(t_next).
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from edm_space.errors import ConfigError

from .ode import ProbabilityFlow
from .registry import register, variant

Tensor = torch.Tensor


def ancestral_step(sigma: Tensor, sigma_next: Tensor, eta: float) -> Tuple[Tensor, Tensor]:
    """(sigma_down, sigma_up) of an ancestral step from sigma to sigma_next with strength eta."""
    if eta == 0:
        return sigma_next, torch.zeros_like(sigma_next)
    sigma_up = torch.minimum(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).sqrt())
    sigma_down = (sigma_next**2 - sigma_up**2).sqrt()
    return sigma_down, sigma_up


def ancestral_solver(
    ode: ProbabilityFlow,
    x: Tensor,
    t_steps: Tensor,
    *,
    eta: float,
    s_noise: float = 1.0,
    randn_like: Callable[[Tensor], Tensor] = torch.randn_like,
    callback: Optional[Callable] = None,
) -> Tensor:
    """DDIM(eta) / ancestral sampling; noise is drawn after the denoiser call, never on the last step."""
    if not eta >= 0:
        raise ConfigError(f"eta = {eta!r} is invalid; it must be >= 0")
    f = ode.formulation
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        sigma, sigma_next = f.sigma(t_cur), f.sigma(t_next)
        denoised = ode.denoise(x, t_cur)
        x_hat = x / f.scale(t_cur)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x_hat = x_hat + (x_hat - denoised) / sigma * (sigma_down - sigma)
        if eta > 0 and sigma_next > 0:
            x_hat = x_hat + randn_like(x_hat) * s_noise * sigma_up
        x = x_hat * f.scale(t_next)
        if callback is not None:
            callback(i, t_cur, sigma, x, denoised)
    return x



ddim = register("ddim", order=1, stochastic=False, paper="Song et al. 2021a (DDIM), eq. 12; eta > 0 is stochastic")(
    variant(ancestral_solver, defaults={"eta": 0.0}, doc="DDIM with eta (default 0: deterministic, Euler in sigma with s = 1).")
)
ancestral = register("ancestral", order=1, stochastic=True, paper="Ho et al. 2020 (DDPM), Alg. 2; k-diffusion's Euler ancestral form")(
    variant(ancestral_solver, defaults={"eta": 1.0}, doc="Ancestral sampling (default eta = 1: DDPM's posterior step with variance beta-tilde).")
)
