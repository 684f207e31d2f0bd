"""Metrics against cases whose answers are known in closed form."""

import math

import numpy as np
import pytest
import torch

from edm_space.ideal import GaussianMixtureDenoiser
from edm_space.metrics import bootstrap, frechet_distance, log_likelihood, loss_floor, mmd2, sliced_wasserstein2

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_sliced_w2_of_shifted_gaussians_is_shift_over_sqrt_dim():
    # W2 along a unit direction theta between N(a, I) and N(b, I) is |theta.(a - b)|; its mean square over the
    # sphere is |a - b|^2 / d.
    d, shift = 4, torch.tensor([1.2, -0.4, 0.0, 0.6], dtype=F64)
    x = torch.randn(5000, d, dtype=F64, generator=gen(0))
    y = torch.randn(5000, d, dtype=F64, generator=gen(1)) + shift
    assert sliced_wasserstein2(x, y, num_projections=1500) == pytest.approx(float(shift.norm()) / math.sqrt(d), rel=0.04)


def test_sliced_w2_handles_unequal_sizes_exactly():
    # One direction in 1-D: x = {0, 1}, y = {0, 0.5, 1}: quantile functions differ on (1/3, 1/2] by 0.5 and on
    # (1/2, 2/3] by 0.5, so W2^2 = 2 * (1/6) * 0.25 = 1/12.
    x = torch.tensor([[0.0], [1.0]], dtype=F64)
    y = torch.tensor([[0.0], [0.5], [1.0]], dtype=F64)
    assert sliced_wasserstein2(x, y, num_projections=3) == pytest.approx(math.sqrt(1 / 12), rel=1e-9)
    assert sliced_wasserstein2(x, x) == 0


def test_mmd_matches_the_gaussian_closed_form():
    # For N(m1, s1^2 I), N(m2, s2^2 I) and k = exp(-|a-b|^2/(2h^2)): E k(X, Y) = (h^2/(h^2+s1^2+s2^2))^(d/2)
    # exp(-|m1-m2|^2 / (2 (h^2+s1^2+s2^2))).
    d, h, s1, s2 = 2, 1.0, 0.5, 0.7
    m1, m2 = torch.zeros(d, dtype=F64), torch.tensor([0.8, 0.0], dtype=F64)

    def expected_k(a, sa, b, sb):
        v = h**2 + sa**2 + sb**2
        return (h**2 / v) ** (d / 2) * math.exp(-float((a - b).norm()) ** 2 / (2 * v))

    exact = expected_k(m1, s1, m1, s1) + expected_k(m2, s2, m2, s2) - 2 * expected_k(m1, s1, m2, s2)
    x = m1 + s1 * torch.randn(3000, d, dtype=F64, generator=gen(2))
    y = m2 + s2 * torch.randn(3000, d, dtype=F64, generator=gen(3))
    assert mmd2(x, y, bandwidths=[h]) == pytest.approx(exact, abs=0.01)
    same = mmd2(x, m1 + s1 * torch.randn(3000, d, dtype=F64, generator=gen(4)), bandwidths=[h])
    assert abs(same) < 0.005


def test_bootstrap_error_bar_scales_like_one_over_sqrt_n():
    errors = []
    for n in (500, 4000):
        x = torch.randn(n, 2, dtype=F64, generator=gen(5))
        y = torch.randn(n, 2, dtype=F64, generator=gen(6)) + 0.5
        _, error = bootstrap(lambda a, b: float((a.mean(0) - b.mean(0)).norm()), x, y, num_resamples=40)
        errors.append(error)
    assert errors[0] / errors[1] == pytest.approx(math.sqrt(8), rel=0.35)


def gaussian_denoiser(mu, c):
    def denoise(x, sigma):
        return mu + c**2 / (c**2 + sigma.reshape(-1, *[1] * (x.ndim - 1)) ** 2) * (x - mu)

    return denoise


@pytest.mark.parametrize("exact_divergence", [True, False])
def test_likelihood_of_a_gaussian_matches_its_log_density(exact_divergence):
    mu, c, d, sigma_min = 0.3, 0.7, 4, 1e-3
    x = mu + c * torch.randn(128, d, dtype=F64, generator=gen(7))
    result = log_likelihood(gaussian_denoiser(mu, c), x, sigma_min=sigma_min, sigma_max=80.0, num_steps=48,
                            prior_mean=mu, prior_std=math.sqrt(80.0**2 + c**2), exact_divergence=exact_divergence)
    var = c**2 + sigma_min**2  # the ODE starts at sigma_min: p(x; sigma_min) = N(mu, (c^2 + sigma_min^2) I)
    exact = -0.5 * ((x - mu) ** 2).sum(1) / var - 0.5 * d * math.log(2 * math.pi * var)
    assert (result["log_p"] - exact).abs().max() / d < 1e-3
    assert torch.allclose(result["bits_per_dim"], -result["log_p"] / d / math.log(2))


def test_likelihood_of_a_gaussian_mixture_matches_its_log_density():
    means = torch.tensor([[-1.0, 0.5], [1.0, -0.5], [0.0, 1.5]], dtype=F64)
    covariances = torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]], [[0.1, 0.0], [0.0, 0.1]]], dtype=F64)
    mixture = GaussianMixtureDenoiser(means, covariances, torch.tensor([0.5, 0.3, 0.2], dtype=F64))
    x = mixture.sample(64, generator=gen(8)).to(F64)
    result = log_likelihood(mixture, x, sigma_min=1e-3, sigma_max=300.0, num_steps=160, prior_mean=mixture.mean)
    exact = mixture.log_density(x, sigma=1e-3)
    assert (result["log_p"] - exact).abs().max() / 2 < 1e-3


def test_loss_floor_is_reached_by_the_ideal_denoiser_and_not_beaten():
    import presets
    from edm_space.ideal import IdealDenoiser

    f = presets.get("edm")
    data = torch.randn(50, 2, dtype=F64, generator=gen(9)) * 0.5
    rows = loss_floor(IdealDenoiser(data), f, data, num_draws=256, buckets=(0.01, 0.1, 1.0, 10.0))
    for row in rows:
        assert row["excess"] == pytest.approx(0.0, abs=1e-12)  # the same denoiser on the same draws
    shrunk = loss_floor(lambda x, s: IdealDenoiser(data)(x, s) + 0.2, f, data, num_draws=256, buckets=(0.01, 0.1, 1.0, 10.0))
    assert all(row["excess"] > 0 for row in shrunk)
    assert [r["floor"] for r in rows] == [r["floor"] for r in shrunk]  # the floor does not depend on the model


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    # Both covariances diagonal: FD = |m1 - m2|^2 + sum (s1 - s2)^2 over the standard deviations.
    s1, s2 = np.array([1.0, 0.5, 2.0]), np.array([0.5, 0.5, 1.0])
    shift = np.array([1.0, 0.0, -1.0])
    rng = np.random.default_rng(10)
    a = rng.normal(size=(200000, 3)) * s1
    b = rng.normal(size=(200000, 3)) * s2 + shift
    exact = float((shift**2).sum() + ((s1 - s2) ** 2).sum())
    assert frechet_distance(a, b) == pytest.approx(exact, rel=0.02)
    assert frechet_distance(a[:100000], a[100000:]) < 0.01
