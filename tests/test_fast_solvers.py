"""iPNDM, UniPC and DEIS against closed-form math, and the analytical first step.

The Gaussian problem of tests/test_solvers.py (data N(mu, c^2 I), whose PF-ODE has a
closed-form solution) measures orders of convergence; its helpers are imported from
there. The order tests end with final_step="denoise": the solver integrates to
sigma_min = sigma(t_{N-1}), a level that does not move with N, and the sample is
D(x; sigma_min), so the error is the integration error up to sigma_min (the reference
is the exact flow to sigma_min followed by the exact D).

Hand-written references (Adams-Bashforth weights by exact polynomial integration,
DEIS weights by scipy quadrature in t, the formulation's ODE from the schedules of
tests/test_solvers.py) check single steps to round-off. tests/test_references_fast_solvers.py
compares with diffusers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import torch

import samplers
from edm_space.errors import ConfigError
from edm_space.ideal import IdealDenoiser
from samplers.ipndm import constant_step_coefficients, lagrange_integrals, published_weights
from test_solvers import C_2D, LARGE, MU_2D, SMALL, Gaussian, fitted_order, latents_2d, reference_end, schedule

F64 = torch.float64
NEW_SOLVERS = ["ipndm", "ipndm-v", "unipc-2", "unipc-3", "deis"]


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def denoised_end_error(D: Gaussian, solver: str, preset: str, discretization, num_steps: int, **options) -> float:
    """Max error of an N-step solve ending with final_step="denoise", against the exact flow to sigma_min, then D."""
    z = latents_2d()
    info: dict = {}
    x = samplers.sample(
        D, z, formulation=preset, solver=solver, num_steps=num_steps, discretization=discretization, final_step="denoise", info=info, **options
    )
    return (x - reference_end(D, preset, z, info["t_steps"], "denoised")).abs().max().item()


# ---------------------------------------------------------------------------
# 1. Orders of convergence, on uniform and on unequal steps.

# Adams-Bashforth of order 4 in t = sigma is stable only while |h| sigma / (c^2 + sigma^2) stays below
# ~0.3; equal steps from sigma = 80 meet that for c = 0.5 only beyond N ~ 1000, so the equal-step
# cases use a broader law (c = 4). Its first (Euler) step at sigma = 80, where the solution is
# nearly linear in sigma, adds an error far below the fourth-order one.
NARROW, WIDE = Gaussian(MU_2D, C_2D), Gaussian(MU_2D, 4.0)
EQUAL_T = (160, 320, 640, 1280)  # edm's uniform-t: equal steps in sigma on [0.002, 80]
FINE = (80, 160, 320, 640)

ORDER_CASES = [
    # Adams-Bashforth in the formulation's t: equal steps (uniform-t on edm) and edm's rho = 7 steps.
    ("ipndm", {}, 4, WIDE, "edm", "uniform-t", EQUAL_T),
    ("ipndm-v", {}, 4, WIDE, "edm", "uniform-t", EQUAL_T),
    ("ipndm-v", {}, 4, NARROW, "edm", "edm", LARGE),
    ("ipndm-v", {"max_order": 3}, 3, NARROW, "edm", "edm", LARGE),
    ("ipndm", {"max_order": 2}, 2, NARROW, "edm", "edm", SMALL),
    # Exponential integrators in lambda = -ln sigma: equal steps are log-sigma; unequal ones edm's. UniPC at full
    # order to the end (lower_order_final=False): its default lowers the last steps, which costs order (below).
    ("unipc-2", {"variant": "bh1", "lower_order_final": False}, 3, NARROW, "edm", "log-sigma", SMALL),
    ("unipc-2", {"variant": "bh2", "lower_order_final": False}, 3, NARROW, "edm", "log-sigma", SMALL),
    ("unipc-2", {"variant": "bh1", "lower_order_final": False}, 3, NARROW, "vp", "edm", LARGE),
    ("unipc-2", {"variant": "bh2", "lower_order_final": False}, 3, NARROW, "vp", "edm", LARGE),
    ("unipc-3", {"variant": "bh1", "lower_order_final": False}, 4, NARROW, "edm", "log-sigma", FINE),
    ("unipc-3", {"variant": "bh2", "lower_order_final": False}, 4, NARROW, "edm", "log-sigma", FINE),
    ("unipc-3", {"variant": "bh1", "lower_order_final": False}, 4, NARROW, "vp", "edm", LARGE),
    ("unipc-3", {"variant": "bh2", "lower_order_final": False}, 4, NARROW, "vp", "edm", LARGE),
    ("deis", {"max_order": 2}, 2, NARROW, "vp", "log-sigma", SMALL),
    ("deis", {"max_order": 2}, 2, NARROW, "vp", "edm", SMALL),
    ("deis", {"max_order": 3}, 3, NARROW, "vp", "log-sigma", SMALL),
    ("deis", {"max_order": 3}, 3, NARROW, "vp", "edm", LARGE),
    ("deis", {"max_order": 3}, 3, NARROW, "flow", "edm", SMALL),
    ("deis", {"basis": "log-sigma"}, 3, NARROW, "edm", "edm", LARGE),
]


@pytest.mark.parametrize("solver,options,order,D,preset,disc,steps", ORDER_CASES, ids=lambda v: str(v) if not isinstance(v, Gaussian) else f"c={v.c}")
def test_order_of_convergence(solver, options, order, D, preset, disc, steps):
    errors = [denoised_end_error(D, solver, preset, disc, n, **options) for n in steps]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert abs(fitted_order(errors, steps) - order) < 0.3, (errors, fitted_order(errors, steps))


def test_deis_log_sigma_basis_at_least_third_order_on_equal_lambda_steps():
    """On equal steps in ln sigma this problem lets third-order multistep methods in lambda converge faster than
    third order at these N (measured ~3.9; dpm++3m with taylor=True likewise, which tests/test_solvers.py checks as > 2.7)."""
    errors = [denoised_end_error(NARROW, "deis", "edm", "log-sigma", n, basis="log-sigma") for n in SMALL]
    assert all(a > b for a, b in zip(errors, errors[1:])) and fitted_order(errors, SMALL) > 2.7, errors


def test_constant_step_ipndm_is_second_order_on_unequal_steps():
    """Constant-step Adams-Bashforth weights assume h_{i-1} = h_i; on edm's rho = 7 steps the mismatch is
    O(h^2) per step, which leaves second order whatever max_order is. ipndm-v, with the weights of the
    actual steps, keeps fourth order on the same steps (ORDER_CASES)."""
    errors = [denoised_end_error(NARROW, "ipndm", "edm", "edm", n) for n in SMALL]
    assert abs(fitted_order(errors, SMALL) - 2) < 0.25, errors
    assert denoised_end_error(NARROW, "ipndm-v", "edm", "edm", SMALL[-1]) < errors[-1] / 5


# ---------------------------------------------------------------------------
# 2. Adams-Bashforth weights.


def exact_lagrange_integrals(nodes, a, b):
    """Integral over [a, b] of each Lagrange basis polynomial on `nodes`, by exact polynomial antiderivatives.

    Written in u = (tau - a) / (b - a), so that the monomial coefficients stay of order one."""
    u_nodes = [(node - a) / (b - a) for node in nodes]
    out = []
    for j, node in enumerate(u_nodes):
        basis = np.poly1d([1.0])
        for m, other in enumerate(u_nodes):
            if m != j:
                basis = basis * np.poly1d([1.0, -other]) / (node - other)
        antiderivative = basis.integ()
        out.append((b - a) * (antiderivative(1.0) - antiderivative(0.0)))
    return out


def test_constant_step_weights_are_the_textbook_adams_bashforth():
    assert constant_step_coefficients(1) == pytest.approx([1.0], abs=1e-14)
    assert constant_step_coefficients(2) == pytest.approx([3 / 2, -1 / 2], abs=1e-14)
    assert constant_step_coefficients(3) == pytest.approx([23 / 12, -16 / 12, 5 / 12], abs=1e-14)
    assert constant_step_coefficients(4) == pytest.approx([55 / 24, -59 / 24, 37 / 24, -9 / 24], abs=1e-14)


@pytest.mark.parametrize("seed", range(4))
def test_variable_step_weights_integrate_the_lagrange_basis(seed):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0.1, 3.0, 5))[::-1]  # t_{i-3} > ... > t_i > t_{i+1}: integration towards 0
    nodes, a, b = list(t[3::-1]), t[3], t[4]
    for k in (1, 2, 3, 4):
        assert lagrange_integrals(nodes[:k], a, b) == pytest.approx(exact_lagrange_integrals(nodes[:k], a, b), rel=1e-12, abs=1e-14)
    # AB2 on unequal steps in closed form: h (1 + r/2) and -h r/2, r = h_i / h_{i-1}.
    h, h_prev = b - a, a - t[2]
    r = h / h_prev
    assert lagrange_integrals([a, t[2]], a, b) == pytest.approx([h * (1 + r / 2), -h * r / 2], rel=1e-12)


# ---------------------------------------------------------------------------
# 3. Single steps against hand-written loops in the formulation's own t and x.


def drift_by_hand(D: Gaussian, preset: str, x: torch.Tensor, t: float):
    """(dx/dt, D) of dx/dt = (sigma'/sigma + s'/s) x - s sigma'/sigma D(x/s; sigma) (EDM eq. 4), schedules written out."""
    sigma, dsigma, s, ds = schedule(preset, t)
    denoised = D(x / s, torch.full((x.shape[0],), sigma, dtype=F64))
    return (dsigma / sigma + ds / s) * x - s * dsigma / sigma * denoised, denoised


TEXTBOOK_AB = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


@pytest.mark.parametrize("solver", ["ipndm", "ipndm-v"])
@pytest.mark.parametrize("preset,disc", [("vp", "vp"), ("flow", "edm")])
def test_ipndm_steps_by_hand(solver, preset, disc):
    """Adams-Bashforth on the formulation's own ODE with warm start 1, 2, 3, 4, the step into t = 0 included."""
    D = Gaussian(MU_2D, C_2D)
    z = latents_2d(6)
    info: dict = {}
    ours = samplers.sample(D, z, formulation=preset, solver=solver, num_steps=9, discretization=disc, info=info)
    t = info["t_steps"].tolist()
    sigma_0, _, s_0, _ = schedule(preset, t[0])
    x = z * sigma_0 * s_0
    derivatives = []
    for i in range(len(t) - 1):
        derivatives.insert(0, drift_by_hand(D, preset, x, t[i])[0])
        k = min(4, len(derivatives))
        if solver == "ipndm":
            weights = [(t[i + 1] - t[i]) * c for c in TEXTBOOK_AB[k]]
        else:
            weights = exact_lagrange_integrals(t[i::-1][:k], t[i], t[i + 1])
        x = x + sum(w * d for w, d in zip(weights, derivatives[:k]))
    assert torch.allclose(ours, x, rtol=1e-10, atol=1e-12)
    # The steps are unequal in t (edm's levels on flow; on vp the short last step into 0), so the two weight sets differ.
    other = samplers.sample(D, z, formulation=preset, solver="ipndm" if solver == "ipndm-v" else "ipndm-v", num_steps=9, discretization=disc)
    assert (other - ours).abs().max() > 1e-6


def published_ipndm_v(D: Gaussian, z: torch.Tensor, sigmas: list, max_order: int = 4) -> torch.Tensor:
    """The published ipndm_v sampler (zju-pi/diff-sampler, diff-solvers-main/solvers.py; its k-diffusion port returns D
    on the step into sigma = 0), written from its formulas: EDM's ODE, t = sigma, d = (x - D) / sigma,
    x_next = x + (t_next - t) (coeff1 d + coeff2 d_prev1 + coeff3 d_prev2 + coeff4 d_prev3)."""
    x = z * sigmas[0]
    buffer = []  # earlier d, oldest first
    for i, (t_cur, t_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        denoised = D(x, torch.full((x.shape[0],), t_cur, dtype=F64))
        d = (x - denoised) / t_cur
        order = min(max_order, i + 1)
        h_n = t_next - t_cur
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + h_n * d
        else:
            h_n_1 = t_cur - sigmas[i - 1]
            c1, c2, c3, c4 = (2 + h_n / h_n_1) / 2, -(h_n / h_n_1) / 2, 0.0, 0.0
            if order >= 3:
                h_n_2 = sigmas[i - 1] - sigmas[i - 2]
                temp1 = (1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
                c1, c2, c3 = c1 + temp1, c2 - (1 + h_n_1 / h_n_2) * temp1, temp1 * h_n_1 / h_n_2
            if order == 4:
                h_n_3 = sigmas[i - 2] - sigmas[i - 3]
                ratio = h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3))
                temp2 = ((1 - h_n / (3 * (h_n + h_n_1))) / 2 + (1 - h_n / (2 * (h_n + h_n_1))) * h_n / (6 * (h_n + h_n_1 + h_n_2))) * (
                    h_n * (h_n + h_n_1) * (h_n + h_n_1 + h_n_2)) / (h_n_1 * (h_n_1 + h_n_2) * (h_n_1 + h_n_2 + h_n_3))
                c1 += temp2
                c2 -= (1 + h_n_1 / h_n_2 + ratio) * temp2
                c3 += (h_n_1 / h_n_2 + ratio * (1 + h_n_2 / h_n_3)) * temp2
                c4 = -temp2 * ratio * h_n_1 / h_n_2
            history = [d] + buffer[::-1] + [torch.zeros_like(d)] * 3
            x_next = x + h_n * sum(c * h for c, h in zip((c1, c2, c3, c4), history))
        buffer = (buffer + [d])[-(max_order - 1):] if max_order > 1 else []
        x = x_next
    return x


@pytest.mark.parametrize("max_order", [2, 3, 4])
@pytest.mark.parametrize("disc", ["edm", "log-sigma"])
@pytest.mark.parametrize("num_steps", [3, 6, 10])
def test_published_ipndm_v_equals_the_published_formulas(max_order, disc, num_steps):
    D = Gaussian(MU_2D, C_2D)
    z = latents_2d(6)
    info: dict = {}
    ours = samplers.sample(D, z, formulation="edm", solver="ipndm-v", num_steps=num_steps, discretization=disc, info=info,
                           weights="published", max_order=max_order)
    reference = published_ipndm_v(D, z, info["sigma_steps"].tolist(), max_order)
    assert torch.allclose(ours, reference, rtol=1e-12, atol=1e-13)
    exact = samplers.sample(D, z, formulation="edm", solver="ipndm-v", num_steps=num_steps, discretization=disc, max_order=max_order)
    assert num_steps < 3 or (exact - ours).abs().max() > 1e-6


def test_published_ipndm_v_weights_on_equal_steps():
    """Adams-Bashforth's up to 3 derivatives; with 4, 57, -65, 43, -11 over 24 (third-difference coefficient 11/24
    where Adams-Bashforth has 9/24)."""
    for k in (1, 2, 3):
        assert published_weights([0.1] * k) == pytest.approx(TEXTBOOK_AB[k], abs=1e-14)
    assert [24 * w for w in published_weights([0.1] * 4)] == pytest.approx([57, -65, 43, -11], abs=1e-12)
    # On unequal steps the four weights do not sum to one (they would with h_{i-2}/h_{i-3} in the last one).
    assert abs(sum(published_weights([-0.1, -0.2, -0.4, -0.5])) - 1) > 1e-3
    assert sum(published_weights([-0.1, -0.2, -0.4])) == pytest.approx(1, abs=1e-14)


BIG = (320, 640, 1280, 2560)


@pytest.mark.parametrize("max_order,order", [(4, 2), (3, 3)])
def test_published_ipndm_v_orders_on_edm_steps(max_order, order):
    """Measured on edm's rho = 7 steps (final_step="denoise", so the step into 0 is not part of it): the published
    weights give second order at max_order = 4 (the weights' sum is 1 + O(h^2)) and third at 3; the exact
    variable-step weights keep fourth order (ORDER_CASES)."""
    errors = [denoised_end_error(NARROW, "ipndm-v", "edm", "edm", n, weights="published", max_order=max_order) for n in BIG]
    assert abs(fitted_order(errors, BIG) - order) < 0.3, errors
    if max_order == 4:
        assert denoised_end_error(NARROW, "ipndm-v", "edm", "edm", BIG[-1]) < errors[-1] / 100


@pytest.mark.parametrize("preset", ["vp", "flow"])
@pytest.mark.parametrize("max_order", [2, 3])
def test_deis_tab_steps_by_hand(preset, max_order):
    """tAB-DEIS: eps fitted by a polynomial in the formulation's t, x_hat_{i+1} = x_hat_i + sum_j C_j eps_j with
    C_j = integral over [t_i, t_{i+1}] of sigma'(t) l_j(t) dt (scipy quadrature in t here; the solver integrates
    in ln sigma); DDIM on the first step; the step into sigma = 0 returns D."""
    D = Gaussian(MU_2D, C_2D)
    z = latents_2d(6)
    info: dict = {}
    ours = samplers.sample(D, z, formulation=preset, solver="deis", num_steps=8, discretization="edm", max_order=max_order, info=info)
    t = info["t_steps"].tolist()
    x_hat = z * schedule(preset, t[0])[0]
    history = []  # (t_j, eps_j), newest first
    for i in range(len(t) - 1):
        sigma = schedule(preset, t[i])[0]
        denoised = D(x_hat, torch.full((6,), sigma, dtype=F64))
        if t[i + 1] == 0:
            x_hat = denoised
            break
        history = [(t[i], (x_hat - denoised) / sigma)] + history[: max_order - 1]
        nodes = [node for node, _ in history]
        for j, (node, eps) in enumerate(history):

            def integrand(tau, j=j, node=node):
                basis = math.prod((tau - other) / (node - other) for m, other in enumerate(nodes) if m != j)
                return schedule(preset, tau)[1] * basis

            weight = scipy.integrate.quad(integrand, t[i], t[i + 1], epsabs=0, epsrel=1e-13)[0]
            x_hat = x_hat + weight * eps
    assert torch.allclose(ours, x_hat, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_first_step_is_ddim_then_unic_1(variant):
    """Step 0: UniP-1 is DDIM, x~ = (sigma_1/sigma_0) x_hat_0 + (1 - e^-h) D_0; UniC-1 then adds
    -B(h) (D(x~; sigma_1) - D_0) / 2 with B(h) = -h (bh1) or e^-h - 1 (bh2). The next step starts from the
    corrected state but reuses D(x~; sigma_1), evaluated at the predicted state: one evaluation per step."""
    D = Gaussian(MU_2D, C_2D)
    z = latents_2d(6)
    calls = []
    info: dict = {}
    samplers.sample(
        D, z, formulation="vp", solver="unipc-3", num_steps=6, discretization="edm", variant=variant, info=info,
        callback=lambda step, t, sigma, x, denoised: calls.append((x.clone(), denoised.clone())),
    )
    sigmas = info["sigma_steps"].tolist()
    s_1 = schedule("vp", float(info["t_steps"][1]))[2]
    x_hat_0 = z * sigmas[0]
    d_0 = D(x_hat_0, torch.full((6,), sigmas[0], dtype=F64))
    h = math.log(sigmas[0] / sigmas[1])
    predicted = sigmas[1] / sigmas[0] * x_hat_0 + (1 - math.exp(-h)) * d_0
    d_1 = D(predicted, torch.full((6,), sigmas[1], dtype=F64))
    b_h = -h if variant == "bh1" else math.expm1(-h)
    corrected = predicted - b_h * 0.5 * (d_1 - d_0)
    assert torch.allclose(calls[0][1], d_0, rtol=1e-12, atol=1e-14)
    assert torch.allclose(calls[0][0] / s_1, corrected, rtol=1e-11, atol=1e-13)
    assert torch.allclose(calls[1][1], d_1, rtol=1e-11, atol=1e-13)
    assert (corrected - predicted).abs().max() > 1e-4  # the correction is not negligible here


@pytest.mark.parametrize("solver", NEW_SOLVERS)
@pytest.mark.parametrize("preset", ["vp", "flow"])
def test_callback_reports_every_step(solver, preset):
    """One call per step with the step's start t and sigma and the state after it; the last state is the sample.
    For the multistep solvers without a corrector, denoised is D at the state before the step."""
    D = Gaussian(MU_2D, C_2D)
    calls, info = [], {}
    x = samplers.sample(
        D, latents_2d(5), formulation=preset, solver=solver, num_steps=7, discretization="edm", info=info,
        callback=lambda step, t, sigma, x, denoised: calls.append((step, float(t), float(sigma), x.clone(), denoised.clone())),
    )
    assert [c[0] for c in calls] == list(range(7))
    assert [c[1] for c in calls] == info["t_steps"][:-1].tolist()
    assert [c[2] for c in calls] == pytest.approx(info["sigma_steps"][:-1].tolist(), rel=1e-12)
    assert torch.equal(calls[-1][3], x)
    if not solver.startswith("unipc"):
        for (_, t, sigma, _, denoised), (_, _, _, before, _) in zip(calls[1:], calls[:-1]):
            x_hat = before / schedule(preset, t)[2]
            assert torch.allclose(denoised, D(x_hat, torch.full((5,), sigma, dtype=F64)), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------
# 4. NFE accounting, options.


@pytest.mark.parametrize("solver", NEW_SOLVERS)
@pytest.mark.parametrize("num_steps", [1, 2, 3, 7])
@pytest.mark.parametrize("final_step", ["solver", "denoise"])
def test_nfe_matches_the_registry(solver, num_steps, final_step):
    D = Gaussian(MU_2D, C_2D)
    info: dict = {}
    x = samplers.sample(D, latents_2d(4), formulation="vp", solver=solver, num_steps=num_steps, final_step=final_step, info=info)
    assert info["nfe"] == samplers.get(solver).nfe(num_steps) == D.calls == num_steps
    assert torch.isfinite(x).all()


def test_options_are_discoverable_and_checked():
    assert samplers.get("ipndm").options == ("max_order",)
    assert samplers.get("ipndm-v").options == ("weights", "max_order")
    assert samplers.get("unipc-2").options == ("variant", "lower_order_final") == samplers.get("unipc-3").options
    assert samplers.get("deis").options == ("max_order", "basis")
    assert [samplers.get(name).order for name in NEW_SOLVERS] == [4, 4, 3, 4, 3]
    z = latents_2d(2)
    for solver, option, bad, allowed in [
        ("ipndm", "max_order", 5, "4"),
        ("ipndm-v", "max_order", 0, "4"),
        ("ipndm-v", "weights", "constant", "published"),
        ("unipc-2", "variant", "bh3", "bh2"),
        ("deis", "max_order", 4, "3"),
        ("deis", "basis", "sigma", "log-sigma"),
    ]:
        with pytest.raises(ConfigError) as error:
            samplers.sample(Gaussian(0.0, 1.0), z, solver=solver, num_steps=3, **{option: bad})
        message = str(error.value)
        assert "\n" not in message and repr(bad) in message and allowed in message
    with pytest.raises(ConfigError, match="order"):
        samplers.sample(Gaussian(0.0, 1.0), z, solver="unipc-2", num_steps=3, order=3)  # fixed by the name


# ---------------------------------------------------------------------------
# 5. The analytical first step.


def finite_data() -> torch.Tensor:
    return torch.randn(40, 3, generator=torch.Generator().manual_seed(5), dtype=F64) * 0.7 + torch.tensor([0.4, -0.2, 0.1], dtype=F64)


class Counted:
    """A denoiser that counts its calls."""

    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, 0

    def __call__(self, x_hat, sigma):
        self.calls += 1
        return self.denoiser(x_hat, sigma)


def test_exact_denoiser_tends_to_the_data_mean():
    """The premise: for the exact denoiser, D(x_hat; sigma) -> E[x_0] as sigma -> inf (x_hat ~ sigma z)."""
    data = finite_data()
    D = IdealDenoiser(data)
    x_hat = torch.randn(8, 3, generator=torch.Generator().manual_seed(6), dtype=F64) * 1e8
    assert torch.allclose(D(x_hat, torch.full((8,), 1e8, dtype=F64)), data.mean(dim=0).expand(8, 3), rtol=0, atol=1e-6)


class FirstCallReturns:
    """A denoiser whose first call returns `value` without evaluating (what the analytical first step should be)."""

    def __init__(self, denoiser, value):
        self.denoiser, self.value, self.calls = denoiser, value, 0

    def __call__(self, x_hat, sigma):
        self.calls += 1
        return self.value.expand_as(x_hat) if self.calls == 1 else self.denoiser(x_hat, sigma)


@pytest.mark.parametrize("solver", samplers.names())
def test_analytic_first_step_saves_one_evaluation(solver):
    """With analytic_first_step the first D is the data mean, unevaluated: the sample is that of a denoiser whose
    first answer is the mean, and the run costs one evaluation less than the registry's nfe(N)."""
    data = finite_data()
    mean = data.mean(dim=0)
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(7), dtype=F64)
    counted, stand_in = Counted(IdealDenoiser(data)), FirstCallReturns(IdealDenoiser(data), mean)
    runs = []
    for D, options in ((counted, {"analytic_first_step": True, "data_mean": mean}), (stand_in, {})):
        generator = torch.Generator().manual_seed(8)
        first, info = [], {}
        x = samplers.sample(
            D, z, formulation="vp", solver=solver, num_steps=6, info=info,
            randn_like=lambda x: torch.randn(x.shape, generator=generator, dtype=x.dtype),
            callback=lambda step, t, sigma, x, denoised: first.append(denoised.clone()) if step == 0 else None, **options,
        )
        runs.append((x, info["nfe"], first[0]))
    (x_afs, nfe_afs, first_afs), (x_ref, nfe_ref, _) = runs
    assert torch.equal(first_afs, mean.expand(5, 3))
    assert nfe_afs == samplers.get(solver).nfe(6) - 1 == counted.calls == stand_in.calls - 1 == nfe_ref - 1
    assert torch.allclose(x_afs, x_ref, rtol=0, atol=1e-12)


def test_analytic_first_step_defaults_to_zero_mean_and_checks_its_input():
    z = latents_2d(3)
    first = []
    samplers.sample(
        Gaussian(MU_2D, C_2D), z, solver="euler", num_steps=3, analytic_first_step=True,
        callback=lambda step, t, sigma, x, denoised: first.append(denoised.clone()),
    )
    assert torch.equal(first[0], torch.zeros_like(z))
    with pytest.raises(ConfigError, match="analytic_first_step"):
        samplers.sample(Gaussian(MU_2D, C_2D), z, solver="euler", num_steps=3, data_mean=MU_2D)
    with pytest.raises(ConfigError, match=r"\(3,\)"):
        samplers.sample(Gaussian(MU_2D, C_2D), z, solver="euler", num_steps=3, analytic_first_step=True, data_mean=torch.zeros(3))


def test_analytic_first_step_with_flow_from_pure_noise():
    """Flow starts at sigma = 1e9 (t = 1 - 1e-9): there the mean is the exact D to ~1e-9."""
    D = Gaussian(MU_2D, C_2D)
    z = latents_2d(4)
    info: dict = {}
    plain = samplers.sample(D, z, formulation="flow", solver="ipndm", num_steps=10, info=info)
    afs = samplers.sample(D, z, formulation="flow", solver="ipndm", num_steps=10, analytic_first_step=True, data_mean=MU_2D)
    assert float(info["sigma_steps"][0]) == pytest.approx(1e9, rel=1e-6)
    assert (plain - afs).abs().max() < 1e-7
    wrong = samplers.sample(D, z, formulation="flow", solver="ipndm", num_steps=10, analytic_first_step=True)  # mean 0, not mu
    assert (plain - wrong).abs().max() > 1e-2


def test_unipc_3_lower_order_final_costs_order_at_many_steps():
    """diffusers' default lowers the last steps' order (for stability at few steps); at many steps the second-to-last
    step's UniPC-2 then dominates: measured ~3.6 on these N (tending to 3) against ~4 at full order."""
    full = [denoised_end_error(NARROW, "unipc-3", "edm", "log-sigma", n, lower_order_final=False) for n in FINE]
    lowered = [denoised_end_error(NARROW, "unipc-3", "edm", "log-sigma", n) for n in FINE]
    assert fitted_order(full, FINE) > 3.8, full
    assert 2.7 < fitted_order(lowered, FINE) < 3.75, lowered
    assert lowered[-1] > 1.5 * full[-1]
