"""DEIS (Zhang & Chen 2023): the exponential integrator with a polynomial fit of the noise prediction.

In the unscaled x_hat = x / s the probability-flow ODE is dx_hat / dsigma = eps,
eps = (x_hat - D) / sigma, so the exact step (DEIS's exponential integrator, with
the linear part carried by the scale s) is

    x_{i+1} = (s_{i+1} / s_i) x_i + s_{i+1} * integral over [sigma_i, sigma_{i+1}] of eps dsigma.

tAB-DEIS fits eps by the polynomial through the last k points in the
formulation's own time t and integrates it exactly over the step:

    x_hat_{i+1} = x_hat_i + sum_j C_ij eps_{i-j},
    C_ij = integral over [t_i, t_{i+1}] of sigma'(tau) l_j(tau) dtau = integral over [sigma_i, sigma_{i+1}] of l_j(t(sigma)) dsigma,

l_j the Lagrange basis on t_i, ..., t_{i-k+1}. The weights are computed from
the schedule by Gauss-Legendre quadrature in ln sigma (sigma'(t) may be
singular at t = 0, e.g. vp's, while l_j(t(e^u)) e^u is smooth). basis="log-sigma"
fits eps in ln sigma instead, which is diffusers' DEISMultistepScheduler
("logrho"); on the edm preset (t = sigma) basis="t" is the paper's rhoAB-DEIS.
Order k = 1 is DDIM. Orders warm up (step i uses min(max_order, i + 1)); the
step into sigma = 0 is first order and returns D.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

from edm_space.errors import ConfigError

from .ipndm import lagrange_integrals
from .ode import ProbabilityFlow
from .registry import register

Tensor = torch.Tensor

BASES = ("t", "log-sigma")


@register("deis", order=3, stochastic=False, paper="Zhang & Chen 2023 (DEIS), tAB-DEIS")
def deis(
    ode: ProbabilityFlow,
    x: Tensor,
    t_steps: Tensor,
    *,
    max_order: int = 3,
    basis: str = "t",
    randn_like: Callable[[Tensor], Tensor] = torch.randn_like,
    callback: Optional[Callable] = None,
) -> Tensor:
    """tAB-DEIS of order up to max_order (1-3, default 3); eps interpolated in the formulation's t or in ln sigma."""
    if max_order not in (1, 2, 3):
        raise ConfigError(f"max_order = {max_order!r} is invalid; DEIS's order is 1, 2 or 3")
    if basis not in BASES:
        raise ConfigError(f"basis = {basis!r} is invalid; DEIS interpolates eps in one of {', '.join(BASES)}")
    f = ode.formulation

    def node_of_log_sigma(u: np.ndarray) -> np.ndarray:
        if basis == "log-sigma":
            return u
        return f.sigma_inv(torch.from_numpy(np.exp(u))).numpy()

    times = t_steps.tolist()
    sigmas = f.sigma(t_steps).tolist()
    scales = f.scale(t_steps).tolist()
    nodes = [t if basis == "t" else math.log(s) if s > 0 else -math.inf for t, s in zip(times, sigmas)]
    history: List[Tuple[float, Tensor]] = []  # (node, eps), newest first
    for i in range(len(times) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = ode.denoise(x, t_steps[i])
        x_hat = x / scales[i]
        if sigma_next == 0:
            x_hat = denoised
        else:
            eps = (x_hat - denoised) / sigma
            history = [(nodes[i], eps)] + history[: max_order - 1]
            if len(history) == 1:
                x_hat = x_hat + (sigma_next - sigma) * eps  # DDIM
            else:
                weights = lagrange_integrals(
                    [node for node, _ in history],
                    math.log(sigma),
                    math.log(sigma_next),
                    variable=node_of_log_sigma,
                    weight=np.exp,  # dsigma = e^u du
                )
                for w_j, (_, eps_j) in zip(weights, history):
                    x_hat = x_hat + w_j * eps_j
        x = x_hat * scales[i + 1]
        if callback is not None:
            callback(i, t_steps[i], sigma, x, denoised)
    return x
