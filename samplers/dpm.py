"""DPM-Solver++ (Lu et al. 2022, "DPM-Solver++"): exponential integrators for the data prediction D.

In the unscaled x_hat = x / s and lambda = -ln sigma the probability-flow ODE is
linear in x_hat, and its exact solution from lambda_i to lambda_{i+1} = lambda_i + h is

    x_hat_{i+1} = (sigma_{i+1} / sigma_i) x_hat_i + sigma_{i+1} * integral e^lambda D(lambda) dlambda.

Expanding D in lambda gives the solvers (Lu et al. 2022, eq. 9-10 and Alg. 1-2):
first order: x_hat_{i+1} = (sigma_{i+1}/sigma_i) x_hat_i - expm1(-h) D_i (= DDIM).
None of this depends on s(t): the state is rescaled by s(t_{i+1}) after each step.
A step into sigma = 0 returns D (lambda = inf, the exponential factor vanishes).

3M's lower_order_final (default True, as in diffusers' DPMSolverMultistepScheduler): on fewer than
LOWER_ORDER_FINAL_BELOW = 15 steps the step before the last is at most second order (diffusers'
`lower_order_second`; the last step, into sigma = 0, is first order anyway). A run that ends above 0
(final_step="denoise": the sampler's D at sigma_min follows) counts that D as its last step, so
final_step="denoise" gives the sample of the step into 0, as diffusers' default final_sigmas_type="zero"
does. (Its final_sigmas_type="sigma_min", which returns the state at sigma_min, has no counterpart here.)
For 2M the rule changes nothing: its step before the last is second order anyway.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .ode import ProbabilityFlow
from .registry import register, variant

Tensor = torch.Tensor

#: lower_order_final lowers the last steps' orders only on fewer steps than this (diffusers' rule).
LOWER_ORDER_FINAL_BELOW = 15


def _multistep(
    ode: ProbabilityFlow,
    x: Tensor,
    t_steps: Tensor,
    *,
    order: int,
    taylor: bool = False,
    lower_order_final: bool = True,
    randn_like: Callable[[Tensor], Tensor] = torch.randn_like,
    callback: Optional[Callable] = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) or (3M), warm-started with lower orders; first order on the last step.

    taylor (3M only): False (default) is the published 3M of DPM-Solver, k-diffusion and diffusers; True gives
    every Taylor term its exact phi coefficient (see `_third_order_terms`). lower_order_final: on fewer than
    LOWER_ORDER_FINAL_BELOW steps, step i of N takes order min(order, N - i) (diffusers' default).
    """
    history = []  # (lambda, D) of earlier steps, newest first
    # The steps to sigma = 0: a last level above 0 is followed by the sampler's D (final_step="denoise").
    num_steps = len(t_steps) - 1 + int(bool(ode.formulation.sigma(t_steps[-1]) > 0))
    lowered = lower_order_final and num_steps < LOWER_ORDER_FINAL_BELOW
    step = 0

    def update(x_hat: Tensor, denoised: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        nonlocal history, step
        p = min(order, len(history) + 1, num_steps - step if lowered else order)
        step += 1
        lam, lam_next = -sigma.log(), -sigma_next.log()
        h = lam_next - lam
        x_hat = (sigma_next / sigma) * x_hat - torch.expm1(-h) * denoised
        if order == 2 and p == 2:
            x_hat = x_hat + _midpoint_term(h, lam, denoised, history)
        elif order == 3 and p >= 2:
            x_hat = x_hat + _third_order_terms(h, lam, denoised, history[: p - 1], taylor)
        history = [(lam, denoised)] + history[:1]
        return x_hat

    return _log_sigma_steps(ode, x, t_steps, update, callback)


def _log_sigma_steps(ode: ProbabilityFlow, x: Tensor, t_steps: Tensor, update: Callable, callback: Optional[Callable]) -> Tensor:
    """The loop every DPM-Solver++ variant shares: D at each t_i; x_hat_{i+1} = update(x_hat_i, D, sigma_i, sigma_{i+1})
    in the unscaled variable, except that the step into sigma = 0 lands on D itself."""
    f = ode.formulation
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        sigma, sigma_next = f.sigma(t_cur), f.sigma(t_next)
        denoised = ode.denoise(x, t_cur)
        x_hat = denoised if sigma_next == 0 else update(x / f.scale(t_cur), denoised, sigma, sigma_next)
        x = x_hat * f.scale(t_next)
        if callback is not None:
            callback(i, t_cur, sigma, x, denoised)
    return x


def _midpoint_term(h: Tensor, lam: Tensor, denoised: Tensor, history) -> Tensor:
    """The second-order term of DPM-Solver++(2M), Lu et al. 2022, Alg. 2: -(e^-h - 1) (D_i - D_{i-1}) / (2 r),
    r = h_{i-1} / h_i (diffusers' solver_type="midpoint")."""
    r = (lam - history[0][0]) / h
    return -torch.expm1(-h) * (denoised - history[0][1]) / (2 * r)


def _third_order_terms(h: Tensor, lam: Tensor, denoised: Tensor, history, taylor: bool) -> Tensor:
    """The terms of DPM-Solver++(3M) beyond first order, with d1 ~ h D' and d2 ~ h^2 D'' / 2 from divided
    differences of the last three D (D' = dD/dlambda).

    The exact Taylor terms of D in lambda are h phi_2 D' - h^2 phi_3 D'' with phi_2 = (h - 1 + e^-h)/h and
    phi_3 = phi_2/h - 1/2 (integrals of e^-(h-u) u and e^-(h-u) u^2/2 over [0, h]; Lu et al. 2022, eq. 9-10),
    i.e. phi_2 d1 - 2 phi_3 d2 (taylor=True, third order). The published 3M (DPM-Solver's
    multistep_dpm_solver_third_update, k-diffusion's sample_dpmpp_3m_sde at eta = 0, diffusers'
    DPMSolverMultistepScheduler with solver_order=3) uses phi_2 d1 - phi_3 d2 (taylor=False). Its warm-up
    step with one earlier D is 2M's midpoint term (diffusers' default solver_type="midpoint"); taylor=True
    takes phi_2 d1 there (solver_type="heun").
    """
    h_1 = lam - history[0][0]
    d1_0 = (denoised - history[0][1]) * (h / h_1)
    phi_2 = torch.expm1(-h) / h + 1
    if len(history) < 2:
        return phi_2 * d1_0 if taylor else _midpoint_term(h, lam, denoised, history)
    h_2 = history[0][0] - history[1][0]
    r0, r1 = h_1 / h, h_2 / h
    d1_1 = (history[0][1] - history[1][1]) / r1
    d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi_3 = phi_2 / h - 0.5
    return phi_2 * d1 - (2 if taylor else 1) * phi_3 * d2


dpmpp_2m = register("dpm++2m", order=2, stochastic=False, paper="Lu et al. 2022 (DPM-Solver++), Alg. 2")(
    variant(_multistep, order=2, taylor=False, lower_order_final=True, doc="DPM-Solver++(2M): second-order multistep in log-sigma, first order on the first and last steps.")
)
dpmpp_3m = register("dpm++3m", order=3, stochastic=False, paper="Lu et al. 2022 (DPM-Solver++), multistep order 3")(
    variant(
        _multistep, order=3,
        doc="DPM-Solver++(3M) as published (DPM-Solver, k-diffusion, diffusers), warm-started with orders 1 and 2 "
        "(midpoint); taylor=True: the exact Taylor coefficients (third order); lower_order_final (default, as "
        "diffusers): second order on the step before the last of fewer than 15.",
    )
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

    def update(x_hat: Tensor, denoised: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        lam, lam_next = -sigma.log(), -sigma_next.log()
        h = lam_next - lam
        sigma_mid = (-(lam + 0.5 * h)).exp()
        t_mid = f.sigma_inv(sigma_mid)
        x_hat_mid = (sigma_mid / sigma) * x_hat - torch.expm1(-0.5 * h) * denoised
        denoised_mid = ode.denoise(x_hat_mid * f.scale(t_mid), t_mid)
        return (sigma_next / sigma) * x_hat - torch.expm1(-h) * denoised_mid

    return _log_sigma_steps(ode, x, t_steps, update, callback)
