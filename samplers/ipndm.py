"""iPNDM: Adams-Bashforth multistep on the probability-flow ODE in the formulation's own t and x.

PNDM (Liu et al. 2022) reuses the derivatives of earlier steps as a linear
multistep method; its "improved" form iPNDM (Zhang & Chen 2023, DEIS paper,
Sec. 4 and App.) drops the Runge-Kutta warm start for lower-order
Adams-Bashforth steps: order 1 (Euler) on the first step, then 2, 3 and 4 as
derivatives accumulate. Step i uses the derivatives d_j = dx/dt(x_j, t_j) of
the last k steps:

    x_{i+1} = x_i + sum_j C_ij d_{i-j},   C_ij = integral over [t_i, t_{i+1}] of l_j(tau) dtau,

with l_j the Lagrange basis polynomials on the nodes t_i, ..., t_{i-k+1}
(the polynomial that interpolates the derivatives, integrated over the step).

- `ipndm` uses the constant-step coefficients C_ij = h_i c_j (k = 4: c = 55, -59,
  37, -9 over 24), which assume equal steps; on unequal steps they keep only
  second order.
- `ipndm-v` computes C_ij for the actual, unequal steps (variable-step
  Adams-Bashforth, as zju-pi/diff-sampler's ipndm_v uses it with EDM's steps).

Both take the full multistep step into t_N = 0 as well (derivatives are only
needed at t_i > 0), as diffusers' IPNDMScheduler does. The lower-order first
steps leave a global error of order h^2 unless the solution is nearly linear in
t there, as it is from a large sigma_max on EDM's ODE (t = sigma).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from edm_space.errors import ConfigError

from .ode import ProbabilityFlow
from .registry import register, variant

Tensor = torch.Tensor

QUADRATURE_POINTS = 24  # Gauss-Legendre nodes; exact for the polynomial integrands of Adams-Bashforth


@lru_cache(maxsize=4)
def _gauss_legendre(points: int):
    return np.polynomial.legendre.leggauss(points)


def lagrange_integrals(
    nodes: Sequence[float],
    a: float,
    b: float,
    *,
    variable: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    weight: Optional[Callable[[np.ndarray], np.ndarray]] = None,
) -> List[float]:
    """[integral from a to b of w(u) l_j(g(u)) du for each node j], by Gauss-Legendre quadrature in u.

    l_j is the Lagrange basis polynomial on `nodes` (l_j(nodes[m]) = 1 if m = j else 0),
    g = `variable` and w = `weight` (both identity / 1 when not given: then these are
    the Adams-Bashforth weights, exact up to degree 2 * QUADRATURE_POINTS - 1).
    """
    roots, weights = _gauss_legendre(QUADRATURE_POINTS)
    u = 0.5 * (b - a) * roots + 0.5 * (a + b)
    g = u if variable is None else variable(u)
    w = 0.5 * (b - a) * weights * (1.0 if weight is None else weight(u))
    nodes = [float(n) for n in nodes]
    integrals = []
    for j, node in enumerate(nodes):
        basis = np.ones_like(g)
        for m, other in enumerate(nodes):
            if m != j:
                basis = basis * (g - other) / (node - other)
        integrals.append(float((w * basis).sum()))
    return integrals


@lru_cache(maxsize=None)
def constant_step_coefficients(order: int) -> List[float]:
    """Adams-Bashforth c_j for equal steps (k = 2: 3/2, -1/2; 3: 23, -16, 5 over 12; 4: 55, -59, 37, -9 over 24)."""
    return lagrange_integrals([-float(j) for j in range(order)], 0.0, 1.0)


def _adams_bashforth(
    ode: ProbabilityFlow,
    x: Tensor,
    t_steps: Tensor,
    *,
    variable_steps: bool,
    max_order: int = 4,
    randn_like: Callable[[Tensor], Tensor] = torch.randn_like,
    callback: Optional[Callable] = None,
) -> Tensor:
    """Adams-Bashforth of order min(max_order, steps so far) on dx/dt of the formulation's ODE."""
    if max_order not in (1, 2, 3, 4):
        raise ConfigError(f"max_order = {max_order!r} is invalid; iPNDM's order is 1, 2, 3 or 4")
    f = ode.formulation
    times = t_steps.tolist()
    history: List[Tensor] = []  # derivatives d_i, d_{i-1}, ..., newest first
    for i, (t_cur, t_next) in enumerate(zip(times[:-1], times[1:])):
        d, denoised = ode.derivative(x, t_cur)
        history = [d] + history[: max_order - 1]
        k = len(history)
        if variable_steps:
            weights = lagrange_integrals(times[i::-1][:k], t_cur, t_next)
        else:
            weights = [(t_next - t_cur) * c for c in constant_step_coefficients(k)]
        step = history[0] * weights[0]
        for d_j, w_j in zip(history[1:], weights[1:]):
            step.add_(d_j, alpha=w_j)
        x = x + step
        if callback is not None:
            callback(i, t_steps[i], f.sigma(t_steps[i]), x, denoised)
    return x


ipndm = register("ipndm", order=4, stochastic=False, paper="Zhang & Chen 2023 (DEIS), iPNDM; Liu et al. 2022 (PNDM)")(
    variant(
        _adams_bashforth,
        variable_steps=False,
        doc="iPNDM: constant-step Adams-Bashforth of order up to max_order (default 4) in the formulation's t, lower orders first.",
    )
)
ipndm_v = register("ipndm-v", order=4, stochastic=False, paper="Zhang & Chen 2023 (DEIS), iPNDM with variable-step Adams-Bashforth")(
    variant(
        _adams_bashforth,
        variable_steps=True,
        doc="iPNDM with variable-step Adams-Bashforth coefficients for unequal steps, order up to max_order (default 4).",
    )
)
