"""Euler and Heun with EDM's stochastic churn: EDM Algorithms 1 and 2, generalized to any s(t), sigma(t).

This is the design space of EDM's ablation sampler in one function: the state
is integrated in the formulation's own t and x, so that Euler on the vp preset
with the vp discretization is exactly EDM Table 1's "VP" column.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from edm_space.errors import ConfigError

from .ode import ProbabilityFlow
from .registry import register, variant

Tensor = torch.Tensor


def edm_solver(
    ode: ProbabilityFlow,
    x: Tensor,
    t_steps: Tensor,
    *,
    second_order: bool,
    alpha: float = 1.0,
    churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    randn_like: Callable[[Tensor], Tensor] = torch.randn_like,
    callback: Optional[Callable] = None,
) -> Tensor:
    """EDM Algorithm 2 with the general ODE of eq. 4 and the second-order step of Algorithm 1 (alpha: EDM App. D.2).

    With churn > 0, each step first raises the noise from sigma(t_i) to
    sigma(t_hat) = (1 + gamma) sigma(t_i), gamma = min(churn / N, sqrt(2) - 1)
    where s_tmin <= sigma(t_i) <= s_tmax (else 0), adding fresh noise of
    standard deviation s(t_hat) sqrt(sigma(t_hat)^2 - sigma(t_i)^2) s_noise.
    One randn_like(x) is drawn on every step when churn > 0, none when churn = 0.
    The last step, into t_N = 0, is always an Euler step.
    """
    if not 0 < alpha <= 1:
        raise ConfigError(f"alpha = {alpha!r} is invalid; Heun's alpha must lie in (0, 1]")
    f = ode.formulation
    num_steps = len(t_steps) - 1
    times = t_steps.tolist()
    x_next = x
    for i, (t_cur, t_next) in enumerate(zip(times[:-1], times[1:])):
        x_cur = x_next

        # Increase noise temporarily (Algorithm 2, lines 4-6).
        t_hat, x_hat = t_cur, x_cur
        if churn > 0:
            sigma_cur = f.sigma(t_cur)
            gamma = min(churn / num_steps, math.sqrt(2) - 1) if s_tmin <= sigma_cur <= s_tmax else 0.0
            noise = randn_like(x_cur)  # drawn on every step, so a shared stream stays aligned
            if gamma > 0:
                # (Outside the window t_hat = t_i exactly: a sigma -> t round trip would add ~1e-8 noise.)
                t_hat_tensor = f.sigma_inv(f.round_sigma(sigma_cur + gamma * sigma_cur))
                noise_std = (f.sigma(t_hat_tensor) ** 2 - sigma_cur**2).clip(min=0).sqrt() * f.scale(t_hat_tensor) * s_noise
                x_hat = f.scale(t_hat_tensor) / f.scale(t_cur) * x_cur + noise_std * noise
                t_hat = float(t_hat_tensor)

        # Euler step (Algorithm 1, lines 4-5).
        h = t_next - t_hat
        d_cur, denoised = ode.derivative(x_hat, t_hat)
        if not second_order or t_next == 0:  # into t = 0 (or with final_step="denoise", not at all) the step is Euler
            x_next = x_hat.add(d_cur, alpha=h)
        else:
            # Second-order correction at t_hat + alpha h (Algorithm 1, lines 6-8; alpha = 1 is Heun). Heun's
            # corrector is evaluated at exactly t_{i+1}, as EDM2's edm_sampler does: t_hat + h can land one ulp
            # away, and a guidance interval ending on that level would then decide twice for one level.
            t_prime = t_next if alpha == 1 else t_hat + alpha * h
            x_prime = x_hat.add(d_cur, alpha=alpha * h)
            d_prime, _ = ode.derivative(x_prime, t_prime)
            slope = d_cur.mul(1 - 1 / (2 * alpha)).add_(d_prime, alpha=1 / (2 * alpha))
            x_next = x_hat.add(slope, alpha=h)

        if callback is not None:
            callback(i, t_steps[i], f.sigma(t_steps[i]), x_next, denoised)
    return x_next



euler = register("euler", order=1, stochastic=False, paper="Karras et al. 2022, Alg. 1 (first order); Alg. 2 with churn")(
    variant(edm_solver, second_order=False, doc="Euler's method on the probability-flow ODE; stochastic with churn > 0 (EDM Alg. 2 without the correction).")
)
heun = register("heun", order=2, evaluations_per_step=2, evaluations_last_step=1, stochastic=False, paper="Karras et al. 2022, Alg. 1; Alg. 2 with churn")(
    variant(edm_solver, second_order=True, doc="Heun's second-order method (alpha = 1; alpha = 0.5 is the midpoint rule), EDM Algorithm 1; Algorithm 2 with churn.")
)
