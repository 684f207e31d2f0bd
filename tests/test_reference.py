"""edm_space.reference: the exact probability-flow end point, checked against closed forms.

For N(mu, diag(c^2)) the exact denoiser is D = mu + c^2 / (c^2 + sigma^2) (x - mu), and
(x - mu) / sqrt(c^2 + sigma^2) is constant along dx/dsigma = (x - D) / sigma (EDM eq. 4),
so x(sigma) = mu + (z sigma_0 - mu) sqrt(c^2 + sigma^2) / sqrt(c^2 + sigma_0^2).
For a single point y, D = y and x(sigma) - y = (sigma / sigma_0)(x(sigma_0) - y).
"""

import math

import pytest
import torch

from edm_space.errors import ConfigError
from edm_space.reference import ReferenceSolution, compare_solutions, rms_error, solve_reference

F64 = torch.float64
MU = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=F64)
C = torch.tensor([0.5, 0.25, 0.1, 1.0], dtype=F64)


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def gaussian_denoiser(x, sigma):
    """The posterior mean of N(MU, diag(C^2)) under x = x_0 + sigma n."""
    s2 = sigma.to(F64)[:, None] ** 2
    return MU + C**2 / (C**2 + s2) * (x - MU)


def gaussian_path(z, sigma_0, sigma):
    """The closed-form ODE solution at sigma, started at x = z sigma_0."""
    return MU + (z * sigma_0 - MU) * torch.sqrt(C**2 + sigma**2) / torch.sqrt(C**2 + sigma_0**2)


def latents(n, dim=4, seed=0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_the_closed_form_solves_the_ode():
    # Independent of the solver: central differences of x(sigma) against (x - D) / sigma.
    z = latents(3)
    sigma, h = 0.7, 1e-6
    slope = (gaussian_path(z, 5.0, sigma + h) - gaussian_path(z, 5.0, sigma - h)) / (2 * h)
    x = gaussian_path(z, 5.0, sigma)
    assert torch.allclose(slope, (x - gaussian_denoiser(x, torch.full((3,), sigma, dtype=F64))) / sigma, atol=1e-8)


@pytest.mark.parametrize("sigma_0", [80.0, 1e9])  # 1e9: flow's start (t = 1)
def test_reference_matches_the_closed_form_gaussian_end_point(sigma_0):
    z = latents(64)
    ref = solve_reference(gaussian_denoiser, z, sigma_0, sigma_end=1e-7, rtol=1e-10)
    assert isinstance(ref, ReferenceSolution) and ref.x.shape == z.shape and ref.x.dtype == F64
    assert float((ref.x - gaussian_path(z, sigma_0, 0.0)).abs().max()) < 1e-8
    assert ref.sigma_0 == sigma_0 and ref.sigma_end == 1e-7 and ref.nfev > ref.steps > 0


def test_reference_stops_at_sigma_end():
    # Without `finish` the state at sigma_end itself comes back: x(0.3), not x(0).
    z = latents(32, seed=1)
    ref = solve_reference(gaussian_denoiser, z, 80.0, sigma_end=0.3)
    assert float((ref.x - gaussian_path(z, 80.0, 0.3)).abs().max()) < 1e-8
    assert float((ref.x - gaussian_path(z, 80.0, 0.0)).abs().max()) > 1e-3


def test_chunks_solve_the_same_problem():
    z = latents(40, seed=2)
    whole = solve_reference(gaussian_denoiser, z, 80.0, sigma_end=1e-7)
    chunked = solve_reference(gaussian_denoiser, z, 80.0, sigma_end=1e-7, chunk=16)  # 16 + 16 + 8
    exact = gaussian_path(z, 80.0, 0.0)
    assert float((chunked.x - exact).abs().max()) < 1e-8 and float((whole.x - exact).abs().max()) < 1e-8
    assert chunked.nfev > whole.nfev  # three solves


def test_finish_maps_the_last_state_to_x0_on_a_single_point():
    y = torch.tensor([[0.5, -1.0, 2.0]], dtype=F64)

    def point(x, sigma):
        return y.expand(x.shape[0], -1)

    z = latents(8, dim=3, seed=3)
    at_end = solve_reference(point, z, 10.0, sigma_end=1e-3)
    assert torch.allclose(at_end.x, y + (1e-3 / 10.0) * (z * 10.0 - y), atol=1e-10)
    finished = solve_reference(point, z, 10.0, sigma_end=1e-3, finish=lambda x, s: point(x, s))
    assert torch.allclose(finished.x, y.expand(8, -1), atol=0)


def test_image_shaped_latents_keep_their_shape():
    z = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(4), dtype=F64)

    def flat_gaussian(x, sigma):
        return gaussian_denoiser(x.reshape(len(x), 4), sigma).reshape(x.shape)

    ref = solve_reference(flat_gaussian, z, 80.0, sigma_end=1e-7)
    assert ref.x.shape == (4, 1, 2, 2)
    assert float((ref.x.reshape(4, 4) - gaussian_path(z.reshape(4, 4), 80.0, 0.0)).abs().max()) < 1e-8


def test_halving_the_tolerance_moves_the_end_points_by_less_than_it():
    z = latents(128, seed=5)
    a = solve_reference(gaussian_denoiser, z, 80.0, sigma_end=1e-7, rtol=1e-10)
    b = solve_reference(gaussian_denoiser, z, 80.0, sigma_end=1e-7, rtol=5e-11)
    report = compare_solutions(a, b)
    assert report["max_abs_difference"] < 1e-8 and report["rms_difference"] < 1e-9
    assert report["rms_difference"] <= report["max_sample_rms_difference"] <= report["max_abs_difference"]
    assert b.nfev >= a.nfev


def test_compare_solutions_on_hand_computed_differences():
    x = torch.zeros(2, 4, dtype=F64)
    y = x.clone()
    y[0] = torch.tensor([1.0, 1.0, 1.0, 1.0])  # per-sample RMS 1 and 0; overall sqrt(4 / 8)
    a = ReferenceSolution(x, 1.0, 0.1, 1e-6, 1e-6, 1, 1, 0.0)
    b = ReferenceSolution(y, 1.0, 0.1, 1e-6, 1e-6, 1, 1, 0.0)
    assert compare_solutions(a, b) == {"rms_difference": pytest.approx(math.sqrt(0.5)), "max_sample_rms_difference": 1.0,
                                       "max_abs_difference": 1.0}


def test_rms_error_is_per_coordinate():
    x = torch.zeros(4, 9, dtype=F64)
    y = x.clone()
    y[:, 0] = 3.0  # |x - y| = 3 per sample in 9 dimensions: RMS 3 / sqrt(9)
    assert rms_error(x, y) == pytest.approx(1.0)


@pytest.mark.parametrize("sigma_0, sigma_end", [(1.0, 1.0), (1.0, 2.0), (1.0, 0.0), (math.inf, 1e-3)])
def test_bad_sigma_range_is_refused(sigma_0, sigma_end):
    with pytest.raises(ConfigError, match="0 < sigma_end < sigma_0 < inf"):
        solve_reference(gaussian_denoiser, latents(2), sigma_0, sigma_end)
