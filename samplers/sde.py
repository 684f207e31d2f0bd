"""Reverse-time SDE sampling by Euler-Maruyama, in the family of EDM eq. 6.

For the unscaled x_hat = x / s the reverse SDE family is (EDM eq. 6, minus sign)

    dx_hat = -sigma' sigma grad log p dt - beta(t) sigma^2 grad log p dt + sqrt(2 beta(t)) sigma dW,

with grad log p = (D - x_hat) / sigma^2: the probability-flow ODE plus a Langevin
term of strength beta(t). beta = 0 is the ODE; beta(t) = sigma'(t) / sigma(t) is
the reverse SDE of Song et al. 2021 (EDM, Sec. 4). In the scaled state x = s x_hat
the Langevin drift is beta (x - s D) and the noise is s sigma sqrt(2 beta) dW; each
step integrates that Langevin part exactly for frozen D (an Ornstein-Uhlenbeck step),
which equals Euler-Maruyama to first order and stays stable where beta |h| >> 1.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from edm_space.errors import ConfigError

from .ode import ProbabilityFlow
from .registry import register

Tensor = torch.Tensor

BETA_SCHEDULES = ("score-sde", "constant")


@register("euler-maruyama", order=1, stochastic=True, paper="Karras et al. 2022, eq. 6; Song et al. 2021 (score SDE)")
def euler_maruyama(
    ode: ProbabilityFlow,
    x: Tensor,
    t_steps: Tensor,
    *,
    beta: float = 1.0,
    beta_schedule: str = "score-sde",
    s_noise: float = 1.0,
    randn_like: Callable[[Tensor], Tensor] = torch.randn_like,
    callback: Optional[Callable] = None,
) -> Tensor:
    """Euler-Maruyama on the reverse SDE; beta(t) = beta * sigma'/sigma ("score-sde") or beta ("constant").

    Noise is drawn after the denoiser call, once per step, never on the last step,
    which is a plain Euler step of the ODE into t = 0.
    """
    if beta_schedule not in BETA_SCHEDULES:
        raise ConfigError(f"unknown beta_schedule {beta_schedule!r}; valid: {', '.join(BETA_SCHEDULES)}")
    if not (beta >= 0 and math.isfinite(beta)):
        raise ConfigError(f"beta = {beta!r} is invalid; it must be a finite number >= 0")
    f = ode.formulation
    times = t_steps.tolist()
    for i, (t_cur, t_next) in enumerate(zip(times[:-1], times[1:])):
        h = t_next - t_cur
        d, denoised = ode.derivative(x, t_cur)
        x_next = x.add(d, alpha=h)
        if t_next > 0:  # the step into t = 0 is a plain Euler step of the ODE
            sigma, s, _, _ = ode.scalars(t_cur)
            t64 = torch.tensor(t_cur, dtype=torch.float64)
            strength = beta * float(f.sigma_deriv(t64)) / sigma if beta_schedule == "score-sde" else beta
            # The Langevin part is an Ornstein-Uhlenbeck relaxation towards s D at rate beta, integrated
            # exactly over |h|: to first order this is Euler-Maruyama's h beta (x - s D) and noise
            # s sigma sqrt(2 beta |h|), and it stays stable where beta |h| is large (flow near t = 1).
            decay = -math.expm1(-strength * abs(h))  # 1 - e^{-beta|h|}
            noise_std = s * sigma * math.sqrt(-math.expm1(-2 * strength * abs(h))) * s_noise
            x_next = x_next.add_(s * denoised - x, alpha=decay).add_(randn_like(x), alpha=noise_std)
        if callback is not None:
            callback(i, t_steps[i], f.sigma(t_steps[i]), x_next, denoised)
        x = x_next
    return x
