"""UniPC (Zhao et al. 2023): the UniP predictor with the UniC corrector, data prediction, B(h) = bh1 or bh2.

Like DPM-Solver++ (samplers/dpm.py) it is an exponential integrator for the
data prediction D in the unscaled x_hat = x / s and lambda = -ln sigma, so it
depends on the sigma levels only. With h = lambda_{i+1} - lambda_i, the
previous points' r_m = (lambda_{i-m} - lambda_i) / h and
D1_m = (D_{i-m} - D_i) / r_m, UniP-p (Zhao et al. 2023, Sec. 3) is

    x_hat_{i+1} = (sigma_{i+1}/sigma_i) x_hat_i + (1 - e^-h) D_i - B(h) sum_m a_m D1_m,

with B(h) = -h (bh1) or e^-h - 1 (bh2) and a the solution of
sum_m a_m r_m^(k-1) = g_k k! / B(h), k = 1..p-1, where g_1 = (e^-h - 1)/(-h) - 1
and g_{k+1} = g_k / (-h) - 1/(k+1)! (the phi functions of the expansion of D
in lambda). UniP-2 takes a_1 = 1/2, as the paper's code does.

UniC-p corrects x_hat_{i+1} with the same formula, where the new
point's D_{i+1} - D_i joins the sum with r = 1 and the p coefficients solve the
full p x p system (p = 1: 1/2). D_{i+1} is evaluated once, at the predicted
point, and reused by the next predictor from the corrected point, so the
corrector costs no evaluation; the accuracy rises from p to p + 1 (Zhao et al. 2023).
The last step has no corrector (there is no evaluation after it), and a step
into sigma = 0 returns D (lambda = inf), as DPM-Solver++'s does. Orders are
warmed up: step i uses p = min(order, i + 1); with lower_order_final (the default, as in
diffusers' UniPCMultistepScheduler) also p <= N - i on the N steps' last ones, so that the
last step is first order and, for unipc-3, the one before it second order. The callback reports the corrected
state after each step and D_i, which was evaluated at the predicted state.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

import torch

from edm_space.errors import ConfigError

from .ode import ProbabilityFlow
from .registry import register, variant

Tensor = torch.Tensor

VARIANTS = ("bh1", "bh2")


def unipc_coefficients(h: float, rks: List[float], variant_name: str) -> Tuple[float, List[float]]:
    """(B(h), coefficients of the D1 terms) of UniP (rks: previous points) or UniC (rks: previous points, then 1)."""
    hh = -h  # data prediction: the phi functions of -h
    b_h = hh if variant_name == "bh1" else math.expm1(hh)
    p = len(rks)
    if p == 0:
        return b_h, []
    if p == 1:
        # UniP-2's and UniC-1's single coefficient is taken as 1/2, as in the authors' code (wl-zhao/UniPC).
        return b_h, [0.5]
    g = math.expm1(hh) / hh - 1  # g_1
    b = []
    factorial = 1
    for k in range(1, p + 1):
        b.append(g * factorial / b_h)
        factorial *= k + 1
        g = g / hh - 1 / factorial
    matrix = torch.tensor([[r**k for r in rks] for k in range(p)], dtype=torch.float64)
    solution = torch.linalg.solve(matrix, torch.tensor(b, dtype=torch.float64))
    return b_h, solution.tolist()


def _unipc(
    ode: ProbabilityFlow,
    x: Tensor,
    t_steps: Tensor,
    *,
    order: int,
    variant: str = "bh2",
    lower_order_final: bool = True,
    randn_like: Callable[[Tensor], Tensor] = torch.randn_like,
    callback: Optional[Callable] = None,
) -> Tensor:
    """UniPC-p: UniP-p predictor and UniC-p corrector on every step but the last; one evaluation per step."""
    if variant not in VARIANTS:
        raise ConfigError(f"variant = {variant!r} is invalid; UniPC's B(h) variants are {', '.join(VARIANTS)}")
    f = ode.formulation
    num_steps = len(t_steps) - 1
    if num_steps < 1:
        return x
    sigmas = f.sigma(t_steps).tolist()
    scales = f.scale(t_steps).tolist()
    lambdas = [-math.log(s) if s > 0 else math.inf for s in sigmas]
    x_hat = x / scales[0]
    denoised = ode.denoise(x, t_steps[0])
    history: List[Tuple[float, Tensor]] = []  # (lambda, D) of earlier points, newest first
    for i in range(num_steps):
        lam, sigma_next = lambdas[i], sigmas[i + 1]
        if sigma_next == 0:
            x_hat_next, denoised_next = denoised, None
        else:
            h = lambdas[i + 1] - lam
            p = min(order, len(history) + 1, num_steps - i if lower_order_final else order)
            rks = [(lam_m - lam) / h for lam_m, _ in history[: p - 1]]
            d1s = [(d_m - denoised) / r for (_, d_m), r in zip(history, rks)]
            base = x_hat * (sigma_next / sigmas[i]) - denoised * math.expm1(-h)
            b_h, a = unipc_coefficients(h, rks, variant)
            x_hat_next = base
            for a_m, d1 in zip(a, d1s):
                x_hat_next = x_hat_next - (b_h * a_m) * d1
            denoised_next = None
            if i + 1 < num_steps:
                denoised_next = ode.denoise(x_hat_next * scales[i + 1], t_steps[i + 1])
                # UniC-p: the same update with the new point's D1 = D_{i+1} - D_i at r = 1.
                b_h, c = unipc_coefficients(h, rks + [1.0], variant)
                x_hat_next = base
                for c_m, d1 in zip(c, d1s + [denoised_next - denoised]):
                    x_hat_next = x_hat_next - (b_h * c_m) * d1
        if callback is not None:
            callback(i, t_steps[i], sigmas[i], x_hat_next * scales[i + 1], denoised)
        history = [(lam, denoised)] + history[: order - 2]  # the p - 1 <= order - 1 earlier points
        x_hat, denoised = x_hat_next, denoised_next
    return x_hat * scales[-1]


unipc_2 = register("unipc-2", order=3, stochastic=False, paper="Zhao et al. 2023 (UniPC), UniP-2 + UniC-2 (order 3)")(
    variant(_unipc, order=2, doc="UniPC-2: UniP-2 predictor, UniC-2 corrector (accuracy order 3), data prediction; variant bh1 or bh2 (default).")
)
unipc_3 = register("unipc-3", order=4, stochastic=False, paper="Zhao et al. 2023 (UniPC), UniP-3 + UniC-3 (order 4)")(
    variant(_unipc, order=3, doc="UniPC-3: UniP-3 predictor, UniC-3 corrector (accuracy order 4), data prediction; variant bh1 or bh2 (default).")
)
