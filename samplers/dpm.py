"""DPM-Solver++ (Lu et al. 2022, "DPM-Solver++"): exponential integrators for the data prediction D.

In the unscaled x_hat = x / s and lambda = -ln sigma the probability-flow ODE is
linear in x_hat, and its exact solution from lambda_i to lambda_{i+1} = lambda_i + h is

    x_hat_{i+1} = (sigma_{i+1} / sigma_i) x_hat_i + sigma_{i+1} * integral e^lambda D(lambda) dlambda.

Expanding D in lambda gives the solvers (Lu et al. 2022, eq. 9-10 and Alg. 1-2):
first order: x_hat_{i+1} = (sigma_{i+1}/sigma_i) x_hat_i - expm1(-h) D_i (= DDIM).
None of this depends on s(t): the state is rescaled by s(t_{i+1}) after each step.
A step into sigma = 0 returns D (lambda = inf, the exponential factor vanishes).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .ode import ProbabilityFlow
from .registry import register, variant

Tensor = torch.Tensor


def _multistep(
    ode: ProbabilityFlow,
    x: Tensor,
    t_steps: Tensor,
    *,
    order: int,
    randn_like: Callable[[Tensor], Tensor] = torch.randn_like,
    callback: Optional[Callable] = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) or (3M), warm-started with lower orders; first order on the last step."""
    f = ode.formulation
    history = []  # (lambda, D) of earlier steps, newest first
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        sigma, sigma_next = f.sigma(t_cur), f.sigma(t_next)
        denoised = ode.denoise(x, t_cur)
        x_hat = x / f.scale(t_cur)
        if sigma_next == 0:
            x_hat = denoised
        else:
            lam, lam_next = -sigma.log(), -sigma_next.log()
            h = lam_next - lam
            x_hat = (sigma_next / sigma) * x_hat - torch.expm1(-h) * denoised
            if order == 2 and len(history) >= 1:
                # Lu et al. 2022, Alg. 2: D_i + (D_i - D_{i-1}) / (2 r), r = h_{i-1} / h_i.
                r = (lam - history[0][0]) / h
                x_hat = x_hat - torch.expm1(-h) * (denoised - history[0][1]) / (2 * r)
            elif order == 3 and len(history) >= 1:
                # Taylor terms of D in lambda: D' h phi_2 and D'' (-h^2 phi_3), with phi_2 = (h - 1 + e^-h)/h and
                # phi_3 = phi_2/h - 1/2 the integrals of e^-(h-u) u and e^-(h-u) u^2/2 over [0, h] divided by h, -h^2
                # (Lu et al. 2022, eq. 9-10). D' and D'' come from divided differences of the last three D.
                h_1 = lam - history[0][0]
                d1_0 = (denoised - history[0][1]) * (h / h_1)
                phi_2 = torch.expm1(-h) / h + 1
                if len(history) >= 2:
                    h_2 = history[0][0] - history[1][0]
                    r0, r1 = h_1 / h, h_2 / h
                    d1_1 = (history[0][1] - history[1][1]) / r1
                    d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                    d2 = (d1_0 - d1_1) / (r0 + r1)  # ~ h^2 D'' / 2
                    phi_3 = phi_2 / h - 0.5  # -h^2 phi_3 = int_0^h e^-(h-u) u^2/2 du
                    x_hat = x_hat + phi_2 * d1 - phi_3 * 2 * d2
                else:
                    x_hat = x_hat + phi_2 * d1_0
            history = [(lam, denoised)] + history[:1]
        x = x_hat * f.scale(t_next)
        if callback is not None:
            callback(i, t_cur, sigma, x, denoised)
    return x



dpmpp_2m = register("dpm++2m", order=2, stochastic=False, paper="Lu et al. 2022 (DPM-Solver++), Alg. 2")(
    variant(_multistep, order=2, doc="DPM-Solver++(2M): second-order multistep in log-sigma, first order on the first and last steps.")
)
dpmpp_3m = register("dpm++3m", order=3, stochastic=False, paper="Lu et al. 2022 (DPM-Solver++), multistep order 3")(
    variant(_multistep, order=3, doc="DPM-Solver++(3M): third-order multistep in log-sigma, warm-started with orders 1 and 2.")
)


@register("dpm++2s", order=2, evaluations_per_step=2, evaluations_last_step=1, stochastic=False, paper="Lu et al. 2022 (DPM-Solver++), Alg. 1 (2S, r = 1/2)")
def dpmpp_2s(
    ode: ProbabilityFlow,
    x: Tensor,
    t_steps: Tensor,
    *,
    randn_like: Callable[[Tensor], Tensor] = torch.randn_like,
    callback: Optional[Callable] = None,
) -> Tensor:
    """DPM-Solver++(2S): single-step second order with an intermediate point at the log-sigma midpoint."""
    f = ode.formulation
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        sigma, sigma_next = f.sigma(t_cur), f.sigma(t_next)
        denoised = ode.denoise(x, t_cur)
        x_hat = x / f.scale(t_cur)
        if sigma_next == 0:
            x_hat = denoised
        else:
            lam, lam_next = -sigma.log(), -sigma_next.log()
            h = lam_next - lam
            sigma_mid = (-(lam + 0.5 * h)).exp()
            t_mid = f.sigma_inv(sigma_mid)
            x_hat_mid = (sigma_mid / sigma) * x_hat - torch.expm1(-0.5 * h) * denoised
            denoised_mid = ode.denoise(x_hat_mid * f.scale(t_mid), t_mid)
            x_hat = (sigma_next / sigma) * x_hat - torch.expm1(-h) * denoised_mid
        x = x_hat * f.scale(t_next)
        if callback is not None:
            callback(i, t_cur, sigma, x, denoised)
    return x
