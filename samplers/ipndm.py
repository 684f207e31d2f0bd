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
- `ipndm-v` (weights="exact", the default) computes C_ij for the actual,
  unequal steps: variable-step Adams-Bashforth, the interpolant of the
  derivatives integrated exactly over the step (order k on smooth unequal steps).
- `ipndm-v` with weights="published" is the `ipndm_v` sampler of the published
  code (zju-pi/diff-sampler's diff-solvers, used in the AMED and GITS papers'
  comparisons and copied into k-diffusion forks as sample_ipndm_v), weights in
  `published_weights`. With 2 derivatives they are variable-step AB2; with 3,
  AB3's on equal steps but not the variable-step ones; with 4 the
  third-difference coefficient is 11/24 where Adams-Bashforth has 9/24 (57, -65,
  43, -11 over 24 on equal steps: a third-order rule), and on unequal steps the
  four weights do not even sum to one (the last has h_{i-1}/h_{i-2} where
  h_{i-2}/h_{i-3} would make them), which leaves second order on edm's steps
  (measured; third with max_order=3). Like the published code it returns D on a
  step into sigma = 0.

`ipndm` and exact `ipndm-v` take the full multistep step into t_N = 0 as well
(derivatives are only needed at t_i > 0), as diffusers' IPNDMScheduler does. The lower-order first
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


def published_weights(steps: Sequence[float]) -> List[float]:
    """The published ipndm_v weights C_ij / h_i for the steps h_i, h_{i-1}, ... (newest first, k = len(steps) <= 4).

    In step ratios (zju-pi/diff-sampler, diff-solvers-main/solvers.py, ipndm_v_sampler): with
    r = h_i/h_{i-1}, q1 = h_{i-1}/h_{i-2}, q2 = h_{i-2}/h_{i-3}, the weights are AB2's 1 + r/2, -r/2, plus
    a1 (1, -(1 + q1), q1) for k >= 3 and a2 (1, -(1 + q1 + w), q1 + w (1 + q2), -w q1) for k = 4, where
    a1 = (1 - h_i^2 / (3 h_{i-1} (h_{i-1} + h_{i-2}))) / 2, w = h_{i-1} (h_{i-1} + h_{i-2}) / (h_{i-2} (h_{i-2} + h_{i-3})), and
    a2 = ((1 - h_i/(3 s1))/2 + (1 - h_i/(2 s1)) h_i/(6 s2)) h_i s1 s2 / (h_{i-1} (h_{i-1} + h_{i-2}) (h_{i-1} + h_{i-2} + h_{i-3})),
    s1 = h_i + h_{i-1}, s2 = s1 + h_{i-2}.
    """
    k = len(steps)
    if k == 1:
        return [1.0]
    h0, h1 = steps[0], steps[1]
    weights = [1 + h0 / (2 * h1), -h0 / (2 * h1), 0.0, 0.0]
    if k >= 3:
        h2 = steps[2]
        q1 = h1 / h2
        a1 = (1 - h0 * h0 / (3 * h1 * (h1 + h2))) / 2
        for j, c in enumerate((1.0, -(1 + q1), q1)):
            weights[j] += a1 * c
    if k == 4:
        h3 = steps[3]
        s1, s2 = h0 + h1, h0 + h1 + h2
        w = h1 * (h1 + h2) / (h2 * (h2 + h3))
        a2 = ((1 - h0 / (3 * s1)) / 2 + (1 - h0 / (2 * s1)) * h0 / (6 * s2)) * h0 * s1 * s2 / (h1 * (h1 + h2) * (h1 + h2 + h3))
        for j, c in enumerate((1.0, -(1 + q1 + w), q1 + w * (1 + h2 / h3), -w * q1)):
            weights[j] += a2 * c
    return weights[:k]


WEIGHTS = ("exact", "published")


def _adams_bashforth(
    ode: ProbabilityFlow,
    x: Tensor,
    t_steps: Tensor,
    *,
    constant_steps: bool,
    weights: str = "exact",
    max_order: int = 4,
    randn_like: Callable[[Tensor], Tensor] = torch.randn_like,
    callback: Optional[Callable] = None,
) -> Tensor:
    """Adams-Bashforth of order min(max_order, steps so far) on dx/dt of the formulation's ODE.

    constant_steps (ipndm): the equal-step weights; otherwise `weights`, "exact" (variable-step) or "published"
    (the published ipndm_v; see the module).
    """
    if max_order not in (1, 2, 3, 4):
        raise ConfigError(f"max_order = {max_order!r} is invalid; iPNDM's order is 1, 2, 3 or 4")
    if weights not in WEIGHTS:
        raise ConfigError(f"weights = {weights!r} is invalid; ipndm-v's weights are {', '.join(WEIGHTS)}")
    f = ode.formulation
    times = t_steps.tolist()
    history: List[Tensor] = []  # derivatives d_i, d_{i-1}, ..., newest first
    for i, (t_cur, t_next) in enumerate(zip(times[:-1], times[1:])):
        d, denoised = ode.derivative(x, t_cur)
        history = [d] + history[: max_order - 1]
        k = len(history)
        if weights == "published" and f.sigma(t_steps[i + 1]) == 0:
            x = denoised * f.scale(t_steps[i + 1])  # the published sampler's step into sigma = 0 returns D
        else:
            x = x + _combine(history, _step_weights("constant" if constant_steps else weights, times, i, k))
        if callback is not None:
            callback(i, t_steps[i], f.sigma(t_steps[i]), x, denoised)
    return x


def _step_weights(weights: str, times: List[float], i: int, k: int) -> List[float]:
    """C_ij of step i with k derivatives (times: t_0, ..., t_N)."""
    t_cur, t_next = times[i], times[i + 1]
    if weights == "exact":
        return lagrange_integrals(times[i::-1][:k], t_cur, t_next)
    if weights == "constant":
        return [(t_next - t_cur) * c for c in constant_step_coefficients(k)]
    steps = [times[i + 1 - j] - times[i - j] for j in range(k)]  # h_i, h_{i-1}, ...
    return [(t_next - t_cur) * c for c in published_weights(steps)]


def _combine(history: List[Tensor], weights: List[float]) -> Tensor:
    step = history[0] * weights[0]
    for d_j, w_j in zip(history[1:], weights[1:]):
        step.add_(d_j, alpha=w_j)
    return step


ipndm = register("ipndm", order=4, stochastic=False, paper="Zhang & Chen 2023 (DEIS), iPNDM; Liu et al. 2022 (PNDM)")(
    variant(
        _adams_bashforth,
        constant_steps=True,
        weights="exact",
        doc="iPNDM: constant-step Adams-Bashforth of order up to max_order (default 4) in the formulation's t, lower orders first.",
    )
)
ipndm_v = register("ipndm-v", order=4, stochastic=False, paper="Zhang & Chen 2023 (DEIS), iPNDM with variable-step Adams-Bashforth")(
    variant(
        _adams_bashforth,
        doc="Variable-step Adams-Bashforth (the derivatives' interpolant integrated exactly over each step), order up to "
        "max_order (default 4); weights=\"published\": the published ipndm_v sampler's weights.",
        constant_steps=False,
    )
)
