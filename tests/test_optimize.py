"""samplers.optimize: fitted time steps on a Gaussian whose ODE end point is known in closed form.

The reference end points are the closed form (not edm_space.reference), so the errors
the fit reports are checked against an independent computation, and the fitted levels
are judged on held-out latents the fit never saw.
"""

import json
import math

import numpy as np
import pytest
import torch

import samplers
from edm_space.errors import ConfigError
from samplers.optimize import OptimizedSteps, levels_from_parameters, optimize_steps, parameters_from_levels, save_levels

F64 = torch.float64
MU = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=F64)
C = torch.tensor([0.5, 0.25, 0.1, 1.0], dtype=F64)
SIGMA_MAX = 80.0


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def denoiser(x, sigma):
    """The posterior mean of N(MU, diag(C^2))."""
    return MU + C**2 / (C**2 + sigma.to(F64)[:, None] ** 2) * (x - MU)


def exact_end(z, sigma_0=SIGMA_MAX):
    """x(0) of the PF-ODE from x = z sigma_0: (x - MU) / sqrt(C^2 + sigma^2) is constant along it."""
    return MU + (z * sigma_0 - MU) * C / torch.sqrt(C**2 + sigma_0**2)


def latents(n, seed):
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=F64)


def rms(x, y):
    return math.sqrt(float(((x - y) ** 2).mean()))


def edm_levels(n, sigma_min=0.002, sigma_max=SIGMA_MAX, rho=7.0):
    """EDM eq. 5, written out."""
    return [(sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho for i in range(n)]


@pytest.fixture(scope="module")
def fit():
    calibration = latents(64, seed=1)
    result = optimize_steps(denoiser, "edm", "euler", 4, calibration, exact_end(calibration), max_evaluations=250)
    return result, calibration


def test_level_parameterization_round_trips_and_decreases():
    levels = np.array(edm_levels(10))
    p = parameters_from_levels(levels)
    assert len(p) == 9
    assert abs(levels_from_parameters(p, SIGMA_MAX) - levels).max() < 1e-9
    wild = levels_from_parameters([-3.0, 5.0, 0.0, -1.0], SIGMA_MAX)
    assert wild[0] == SIGMA_MAX and all(a > b > 0 for a, b in zip(wild, wild[1:]))
    # ln sigma_1 = ln 80 - softplus(0) = ln 80 - ln 2
    assert levels_from_parameters([0.0], SIGMA_MAX)[1] == pytest.approx(40.0, rel=1e-12)


def test_fit_returns_levels_for_the_budget(fit):
    result, _ = fit
    assert isinstance(result, OptimizedSteps)
    assert result.num_steps == 4 and result.nfe == 4 and len(result.sigmas) == 4  # euler: one evaluation per step
    assert result.sigmas.dtype == F64 and float(result.sigmas[0]) == SIGMA_MAX
    assert all(a > b > 0 for a, b in zip(result.sigmas.tolist(), result.sigmas.tolist()[1:]))
    assert result.initial_sigmas.tolist() == pytest.approx(edm_levels(4), rel=1e-12)
    assert result.solver == "euler" and result.formulation == "edm"


def test_reported_errors_are_the_errors_of_those_levels(fit):
    result, calibration = fit
    target = exact_end(calibration)
    before = samplers.sample(denoiser, calibration, solver="euler", discretization=torch.tensor(edm_levels(4), dtype=F64))
    after = samplers.sample(denoiser, calibration, solver="euler", discretization=result.sigmas)
    assert result.error_before == pytest.approx(rms(before, target), rel=1e-9)
    assert result.error_after == pytest.approx(rms(after, target), rel=1e-9)
    assert result.error_after < 0.7 * result.error_before


def test_fitted_levels_lower_the_held_out_error(fit):
    result, _ = fit
    held_out = latents(256, seed=2)  # never seen by the fit
    target = exact_end(held_out)
    start = samplers.sample(denoiser, held_out, solver="euler", num_steps=4, discretization="edm")
    fitted = samplers.sample(denoiser, held_out, solver="euler", discretization=result.sigmas)
    assert rms(fitted, target) < 0.7 * rms(start, target)


def test_two_evaluation_solvers_get_the_steps_within_the_budget():
    calibration = latents(16, seed=3)
    result = optimize_steps(denoiser, "edm", "heun", 10, calibration, exact_end(calibration), max_evaluations=5)
    assert (result.num_steps, result.nfe) == (5, 9)  # heun: N steps cost 2N - 1 <= 10
    info = {}
    samplers.sample(denoiser, calibration, solver="heun", discretization=result.sigmas, info=info)
    assert info["nfe"] == 9


def test_saved_levels_sample_like_the_levels_themselves(fit, tmp_path):
    result, _ = fit
    path = save_levels(tmp_path / "steps.json", result.sigmas, solver="euler", nfe=result.nfe)
    payload = json.loads((tmp_path / "steps.json").read_text())
    assert payload["sigmas"] == result.sigmas.tolist() and payload["solver"] == "euler" and payload["nfe"] == 4
    z = latents(8, seed=4)
    from_file = samplers.sample(denoiser, z, solver="euler", discretization=str(path))
    explicit = samplers.sample(denoiser, z, solver="euler", discretization=result.sigmas)
    assert torch.equal(from_file, explicit)
    assert not [p for p in tmp_path.iterdir() if p.name != "steps.json"]  # no temporary file left behind


@pytest.mark.parametrize("solver, nfe, match", [
    ("ancestral", 10, "stochastic"),  # a noisy run has no single exact end point to fit
    ("euler", 1, "at least 2"),
    ("heun", 2, "at least 2"),  # 2 evaluations: one heun step
    ("nope", 10, "unknown solver"),
])
def test_bad_requests_are_refused(solver, nfe, match):
    z = latents(4, seed=5)
    with pytest.raises(ConfigError, match=match):
        optimize_steps(denoiser, "edm", solver, nfe, z, exact_end(z))


def test_reference_must_match_the_latents():
    z = latents(4, seed=6)
    with pytest.raises(ConfigError, match="must match"):
        optimize_steps(denoiser, "edm", "euler", 5, z, exact_end(z)[:3])
    with pytest.raises(ConfigError, match="sigma_min < sigma_max"):
        optimize_steps(denoiser, "edm", "euler", 5, z, exact_end(z), sigma_min=90.0)


def test_fit_from_other_levels_with_solver_options_and_the_analytic_first_step():
    """The reported error before the fit is that of the given start levels with the given options (recomputed here
    against the closed form); the analytical first step buys one more step for the same NFE; bad starts are refused."""
    z = torch.randn(32, 4, generator=torch.Generator().manual_seed(7), dtype=F64)
    start = np.exp(np.linspace(math.log(SIGMA_MAX), math.log(0.01), 6))
    fit = optimize_steps(denoiser, "edm", "dpm++3m", 5, z, exact_end(z), max_evaluations=20, initial=start,
                         solver_options={"taylor": True}, analytic_first_step=True, data_mean=MU)
    assert fit.num_steps == 6 and fit.nfe == 5 and np.allclose(fit.initial_sigmas.numpy(), start, rtol=1e-15)
    x = samplers.sample(denoiser, z, solver="dpm++3m", discretization=torch.from_numpy(start), taylor=True,
                        analytic_first_step=True, data_mean=MU)
    assert fit.error_before == pytest.approx(float((x - exact_end(z)).pow(2).mean().sqrt()), rel=1e-12)
    assert fit.error_after <= fit.error_before
    with pytest.raises(ConfigError, match="holds 5 levels; the fit needs 6"):
        optimize_steps(denoiser, "edm", "dpm++3m", 5, z, exact_end(z), initial=start[:-1], analytic_first_step=True, data_mean=MU)
    with pytest.raises(ConfigError, match="starts at sigma 40"):
        optimize_steps(denoiser, "edm", "euler", 6, z, exact_end(z), initial=start / 2)
    with pytest.raises(ConfigError, match="tylor"):
        optimize_steps(denoiser, "edm", "dpm++3m", 6, z, exact_end(z), solver_options={"tylor": True})
    with pytest.raises(ConfigError, match="1 to 1000"):
        optimize_steps(denoiser, "edm", "euler", 10**9, z, exact_end(z))
