"""Tests for edm_space.ideal: exact denoisers of finite sets and Gaussian mixtures.

Every reference here is computed independently of the module under test:
per-point Gaussian log-likelihoods with scipy for the finite set, Tweedie's
formula through autograd of a torch.distributions mixture for the Gaussian
mixture, and a closed-form single Gaussian.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
from torch import distributions as dist

from edm_space.ideal import GaussianMixtureDenoiser, IdealDenoiser

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F64 = torch.float64


# --------------------------------------------------------------------------- references


def brute_force_posterior_mean(data: np.ndarray, x: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """E[y | x] for y uniform on ``data`` and x = y + sigma * eps, one point at a time."""
    n = data.shape[0]
    flat_data = data.reshape(n, -1).astype(np.float64)
    flat_x = x.reshape(x.shape[0], -1).astype(np.float64)
    out = np.zeros_like(flat_x)
    for b in range(flat_x.shape[0]):
        log_lik = np.empty(n)
        for i in range(n):
            log_lik[i] = scipy.stats.norm.logpdf(flat_x[b], loc=flat_data[i], scale=sigmas[b]).sum()
        weights = np.exp(log_lik - scipy.special.logsumexp(log_lik))
        weights /= weights.sum()
        for i in range(n):
            out[b] += weights[i] * flat_data[i]
    return out.reshape(x.shape)


def torch_mixture(means: torch.Tensor, full_covs: torch.Tensor, weights: torch.Tensor, sigma: float):
    """The noised mixture sum_k w_k N(mu_k, C_k + sigma^2 I) built with torch.distributions."""
    d = means.shape[1]
    comps = dist.MultivariateNormal(means, covariance_matrix=full_covs + sigma**2 * torch.eye(d, dtype=F64))
    return dist.MixtureSameFamily(dist.Categorical(probs=weights / weights.sum()), comps)


def tweedie_reference(means, full_covs, weights, x: torch.Tensor, sigma: float):
    """(D, score, log p) at x by autograd of an independent log-density (Tweedie's formula)."""
    mix = torch_mixture(means, full_covs, weights, sigma)
    xr = x.clone().requires_grad_(True)
    logp = mix.log_prob(xr)
    (grad,) = torch.autograd.grad(logp.sum(), xr)
    return (x + sigma**2 * grad).detach(), grad.detach(), logp.detach()


def random_mixture(kind: str, K: int, d: int, gen: torch.Generator):
    """(means, covariances in the given layout, the same as full matrices, weights)."""
    means = 2.0 * torch.randn(K, d, generator=gen, dtype=F64)
    weights = torch.rand(K, generator=gen, dtype=F64) + 0.2
    if kind == "full":
        A = torch.randn(K, d, d, generator=gen, dtype=F64)
        covs = A @ A.transpose(1, 2) / d + 0.05 * torch.eye(d, dtype=F64)
        # a singular (rank-one) component exercises zero eigenvalues
        v = torch.randn(d, generator=gen, dtype=F64)
        covs[0] = torch.outer(v, v)
        return means, covs, covs, weights
    if kind == "diag":
        var = torch.rand(K, d, generator=gen, dtype=F64) * 1.5 + 0.01
        return means, var, torch.diag_embed(var), weights
    var = torch.rand(K, generator=gen, dtype=F64) * 1.5 + 0.01
    return means, var, var[:, None, None] * torch.eye(d, dtype=F64), weights


# --------------------------------------------------------------------------- IdealDenoiser


def _near_tie_queries(data: torch.Tensor, count: int, offset: float) -> torch.Tensor:
    """Midpoints between points and their nearest neighbours, nudged by ``offset``.

    At tiny sigma the two neighbours then get comparable weights, so the test sees
    more than one-hot softmaxes.
    """
    flat = data.reshape(data.shape[0], -1)
    dist2 = torch.cdist(flat, flat) ** 2
    dist2.fill_diagonal_(float("inf"))
    nn = dist2.argmin(dim=1)
    a = flat[:count]
    b = flat[nn[:count]]
    return ((a + b) / 2 + offset * (a - b)).reshape(count, *data.shape[1:])


@pytest.mark.parametrize("item_shape", [(5,), (1, 4, 4)])
def test_ideal_matches_brute_force(item_shape):
    gen = torch.Generator().manual_seed(1)
    n = 30
    data = torch.randn(n, *item_shape, generator=gen, dtype=F64)
    denoiser = IdealDenoiser(data)
    sigmas = torch.tensor([1e-3, 1e-3, 1e-3, 0.05, 0.3, 1.0, 2.5, 7.0, 50.0, 1e-3], dtype=F64)
    batch = sigmas.shape[0]
    x = data[:batch] + sigmas.reshape(-1, *([1] * len(item_shape))) * torch.randn(
        batch, *item_shape, generator=gen, dtype=F64
    )
    # the sigma = 1e-3 rows sit near ties between neighbours: logit gaps of order one
    x[:3] = _near_tie_queries(data, 3, 1e-7)
    x[-1] = _near_tie_queries(data[5:], 1, -2e-7)[0]

    got = denoiser(x, sigmas)
    ref = brute_force_posterior_mean(data.numpy(), x.numpy(), sigmas.numpy())
    assert got.shape == (batch, *item_shape)
    assert got.dtype == F64
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-8, atol=1e-8)
    # the near-tie rows really are mixtures of two points (otherwise the check above is weak)
    flat_ref = ref.reshape(batch, -1)
    flat_data = data.reshape(n, -1).numpy()
    min_dist_to_data = np.min(np.linalg.norm(flat_ref[:3, None] - flat_data[None], axis=-1), axis=1)
    assert (min_dist_to_data > 1e-3).any()


def test_ideal_sigma_as_scalar_and_tensor_formats():
    gen = torch.Generator().manual_seed(2)
    data = torch.randn(20, 3, generator=gen, dtype=F64)
    x = torch.randn(4, 3, generator=gen, dtype=F64)
    den = IdealDenoiser(data)
    ref = brute_force_posterior_mean(data.numpy(), x.numpy(), np.full(4, 0.7))
    for sigma in (0.7, torch.tensor(0.7, dtype=F64), torch.tensor([0.7], dtype=F64), torch.full((4,), 0.7, dtype=F64)):
        np.testing.assert_allclose(den(x, sigma).numpy(), ref, rtol=1e-10, atol=1e-12)


def test_ideal_output_dtype_follows_input():
    gen = torch.Generator().manual_seed(3)
    data = torch.randn(10, 2, generator=gen)
    den = IdealDenoiser(data)
    x64 = torch.randn(3, 2, generator=gen, dtype=F64)
    assert den(x64, 0.5).dtype == F64
    out32 = den(x64.float(), 0.5)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32, den(x64.float().double(), 0.5).float())
    assert den(torch.zeros(3, 2, dtype=torch.int64), 0.5).dtype == F64


def test_ideal_small_sigma_gives_nearest_point():
    gen = torch.Generator().manual_seed(4)
    data = torch.randn(100, 6, generator=gen, dtype=F64)
    x = data[torch.randint(0, 100, (40,), generator=gen)] + 0.05 * torch.randn(40, 6, generator=gen, dtype=F64)
    x = torch.cat([x, 3 * torch.randn(10, 6, generator=gen, dtype=F64)])
    nearest = torch.cdist(x, data).argmin(dim=1)
    den = IdealDenoiser(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for sigma in (1e-4, 0.0, 1e-200):
            out = den(x, sigma)
            assert torch.isfinite(out).all()
            torch.testing.assert_close(out, data[nearest], rtol=0, atol=1e-12)
    assert torch.equal(den.nearest_index(x), nearest)
    assert den.nearest_index(x).dtype == torch.long


def test_ideal_large_and_infinite_sigma_give_data_mean():
    gen = torch.Generator().manual_seed(5)
    data = torch.randn(64, 1, 4, 4, generator=gen, dtype=F64) + 0.3
    den = IdealDenoiser(data)
    mean = data.mean(dim=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x_big = 1e9 * torch.randn(8, 1, 4, 4, generator=gen, dtype=F64)
        out = den(x_big, 1e9)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, mean.expand_as(out), rtol=0, atol=1e-6)
        # sigma = inf: exactly the mean, whatever x_hat is (even inf/nan, as x / s at s = 0)
        x_inf = torch.full((3, 1, 4, 4), float("inf"), dtype=F64)
        x_inf[1] = float("nan")
        out_inf = den(x_inf, float("inf"))
        assert torch.equal(out_inf, mean.expand_as(out_inf))
        # mixed per-sample sigmas including inf
        sig = torch.tensor([float("inf"), 1.0, float("inf"), 1e9], dtype=F64)
        x = torch.randn(4, 1, 4, 4, generator=gen, dtype=F64)
        mixed = den(x, sig)
        assert torch.equal(mixed[0], mean) and torch.equal(mixed[2], mean)
        ref1 = brute_force_posterior_mean(data.numpy(), x[1:2].numpy(), np.array([1.0]))
        np.testing.assert_allclose(mixed[1:2].numpy(), ref1, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(mixed[3], mean, rtol=0, atol=1e-6)


def test_ideal_chunked_equals_unchunked():
    gen = torch.Generator().manual_seed(6)
    data = torch.randn(57, 7, generator=gen, dtype=F64)
    x = torch.randn(23, 7, generator=gen, dtype=F64) * 1.5
    sig = torch.exp(torch.linspace(-6, 4, 23, dtype=F64))
    whole = IdealDenoiser(data, chunk_bytes=1 << 30)
    assert whole._plan(23) == (23, 57)
    ref = whole(x, sig)
    for budget in (64, 1000, 3000, 20000):
        chunked = IdealDenoiser(data, chunk_bytes=budget)
        bq, nc = chunked._plan(23)
        assert bq < 23 or nc < 57  # really chunked
        torch.testing.assert_close(chunked(x, sig), ref, rtol=1e-12, atol=1e-13)
        assert torch.equal(chunked.nearest_index(x), whole.nearest_index(x))
    np.testing.assert_allclose(
        ref.numpy(), brute_force_posterior_mean(data.numpy(), x.numpy(), sig.numpy()), rtol=1e-8, atol=1e-10
    )


def test_ideal_peak_memory_large_problem():
    """10,000 queries x 5,000 points x 784 dims stays well under 2 GB peak RSS."""
    script = textwrap.dedent(
        """
        import json, resource, torch
        from edm_space.ideal import IdealDenoiser
        torch.manual_seed(0)
        data = torch.rand(5000, 784)
        x = torch.rand(10000, 784)
        sig = torch.exp(torch.linspace(-2.0, 3.0, 10000, dtype=torch.float64))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = IdealDenoiser(data)(x, sig)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # spot-check a few rows against a direct softmax over all points
        rows = torch.tensor([0, 4321, 9999])
        d2 = torch.cdist(x[rows].double(), data.double()) ** 2
        w = torch.softmax(-d2 / (2 * sig[rows, None] ** 2), dim=1)
        err = (w @ data.double() - out[rows].double()).abs().max().item()
        print(json.dumps({"before_kb": before, "peak_kb": after, "err": err,
                          "shape": list(out.shape), "finite": bool(torch.isfinite(out).all())}))
        """
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["shape"] == [10000, 784] and res["finite"]
    assert res["err"] < 1e-5  # float32 output
    peak_bytes = res["peak_kb"] * 1024  # ru_maxrss is in KiB on Linux
    assert peak_bytes < 2 * 2**30, f"peak RSS {peak_bytes / 2**30:.2f} GiB"
    # beyond the imports and inputs: the float64 copy of the queries, the output
    # (float64 + float32) and chunk temporaries near the 256 MiB budget
    grown = (res["peak_kb"] - res["before_kb"]) * 1024
    assert grown < 800 * 2**20, f"evaluation grew RSS by {grown / 2**20:.0f} MiB"


def test_ideal_bad_input():
    data = torch.randn(10, 3, dtype=F64)
    den = IdealDenoiser(data)
    with pytest.raises(ValueError) as err:
        den(torch.randn(4, 5), 1.0)
    msg = str(err.value)
    assert "[4, 5]" in msg and "[3]" in msg and "\n" not in msg
    with pytest.raises(ValueError, match=r"\[3\]"):
        den(torch.randn(3), 1.0)  # missing batch dimension
    img = IdealDenoiser(torch.randn(5, 1, 4, 4))
    with pytest.raises(ValueError) as err:
        img(torch.randn(2, 1, 4, 5), 1.0)
    assert "[2, 1, 4, 5]" in str(err.value) and "[1, 4, 4]" in str(err.value)
    with pytest.raises(ValueError, match="sigma"):
        den(torch.randn(4, 3), torch.ones(3))
    with pytest.raises(ValueError, match="sigma"):
        den(torch.randn(2, 3), -1.0)
    with pytest.raises(ValueError, match="sigma"):
        den(torch.randn(2, 3), float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        den(torch.tensor([[float("nan"), 0.0, 0.0]]), 1.0)
    with pytest.raises(ValueError, match="n >= 1"):
        IdealDenoiser(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="non-finite"):
        IdealDenoiser(torch.tensor([[1.0, float("inf")]]))
    with pytest.raises(ValueError, match="chunk_bytes"):
        IdealDenoiser(data, chunk_bytes=0)


# --------------------------------------------------------------------------- Gaussian mixture


@pytest.mark.parametrize("layout", ["isotropic", "diag", "full"])
def test_gmm_single_gaussian_closed_form(layout):
    gen = torch.Generator().manual_seed(7)
    d, c = 4, 0.8
    mu = torch.randn(1, d, generator=gen, dtype=F64)
    cov = {
        "isotropic": torch.tensor([c**2], dtype=F64),
        "diag": torch.full((1, d), c**2, dtype=F64),
        "full": c**2 * torch.eye(d, dtype=F64)[None],
    }[layout]
    gm = GaussianMixtureDenoiser(mu, cov, torch.ones(1, dtype=F64))
    x = 2 * torch.randn(6, d, generator=gen, dtype=F64)
    sig = torch.tensor([1e-4, 0.1, 0.5, 1.0, 3.0, 1e9], dtype=F64)
    expected = mu + (c**2 / (c**2 + sig**2))[:, None] * (x - mu)
    torch.testing.assert_close(gm(x, sig), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gm.score(x, sig), -(x - mu) / (c**2 + sig**2)[:, None], rtol=1e-12, atol=1e-30)
    var = c**2 + sig**2
    logp = -0.5 * ((x - mu) ** 2).sum(1) / var - 0.5 * d * torch.log(2 * torch.pi * var)
    torch.testing.assert_close(gm.log_density(x, sig), logp, rtol=1e-12, atol=1e-12)
    assert gm.kind == layout


@pytest.mark.parametrize("kind", ["full", "diag", "isotropic"])
def test_gmm_matches_tweedie_autograd(kind):
    gen = torch.Generator().manual_seed({"full": 11, "diag": 12, "isotropic": 13}[kind])
    K, d = 4, 3
    means, covs, full_covs, weights = random_mixture(kind, K, d, gen)
    gm = GaussianMixtureDenoiser(means, covs, weights)
    sigma_levels = [0.02, 0.2, 0.7, 2.0, 10.0]
    per = 12
    sig = torch.tensor(sigma_levels, dtype=F64).repeat_interleave(per)
    x0 = gm.sample(sig.shape[0], generator=gen)
    x = x0 + sig[:, None] * torch.randn(sig.shape[0], d, generator=gen, dtype=F64)
    x[::5] *= 2.5  # some points off the typical set
    got_d, got_score, got_logp = gm(x, sig), gm.score(x, sig), gm.log_density(x, sig)
    for j, s in enumerate(sigma_levels):
        rows = slice(j * per, (j + 1) * per)
        ref_d, ref_score, ref_logp = tweedie_reference(means, full_covs, weights, x[rows], s)
        torch.testing.assert_close(got_d[rows], ref_d, rtol=1e-7, atol=1e-8)
        torch.testing.assert_close(got_score[rows], ref_score, rtol=1e-7, atol=1e-7)
        torch.testing.assert_close(got_logp[rows], ref_logp, rtol=1e-9, atol=1e-9)
    # D = x + sigma^2 * score holds internally too
    torch.testing.assert_close(got_d, x + sig[:, None] ** 2 * got_score, rtol=1e-9, atol=1e-9)


def test_gmm_log_density_at_zero_noise():
    gen = torch.Generator().manual_seed(14)
    means, covs, full_covs, weights = random_mixture("diag", 3, 2, gen)
    gm = GaussianMixtureDenoiser(means, covs, weights)
    x = torch.randn(20, 2, generator=gen, dtype=F64)
    ref = dist.MixtureSameFamily(
        dist.Categorical(probs=weights / weights.sum()), dist.MultivariateNormal(means, full_covs)
    ).log_prob(x)
    torch.testing.assert_close(gm.log_density(x), ref, rtol=1e-10, atol=1e-10)
    # D at sigma = 0 is x itself; at sigma = inf the mixture mean
    assert torch.equal(gm(x, 0.0), x)
    mix_mean = (weights / weights.sum()) @ means
    torch.testing.assert_close(gm(x, float("inf")), mix_mean.expand_as(x), rtol=0, atol=1e-15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = gm(1e9 * x, 1e9)
    torch.testing.assert_close(out, mix_mean.expand_as(x), rtol=0, atol=1e-6)


def _self_normalized_std_error(draws: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Delta-method standard error (norm over coordinates) of sum_i w_i y_i at each x."""
    out = []
    sq = (draws**2).sum(1)
    for chunk in x.split(50):
        w = torch.softmax(-torch.cdist(chunk, draws) ** 2 / (2 * sigma**2), dim=1)
        mean = w @ draws
        w2 = w * w
        var = w2 @ sq - 2 * (mean * (w2 @ draws)).sum(1) + (mean**2).sum(1) * w2.sum(1)
        out.append(var.clamp_min(0).sqrt())
    return torch.cat(out)


def test_gmm_agrees_with_finite_set_of_many_draws():
    """The mixture's exact D against the IdealDenoiser of 200,000 of its own draws."""
    gen = torch.Generator().manual_seed(15)
    means = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]], dtype=F64)
    covs = torch.tensor(
        [[[0.5, 0.2], [0.2, 0.3]], [[0.2, -0.1], [-0.1, 0.6]], [[0.4, 0.0], [0.0, 0.1]]], dtype=F64
    )
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    gm = GaussianMixtureDenoiser(means, covs, weights)
    draws = gm.sample(200_000, generator=gen)
    ideal = IdealDenoiser(draws)
    errors, std_errors = [], []
    for s in (0.5, 1.0, 2.0):
        x = gm.sample(200, generator=gen) + s * torch.randn(200, 2, generator=gen, dtype=F64)
        errors.append((ideal(x, s) - gm(x, s)).norm(dim=1))
        std_errors.append(_self_normalized_std_error(draws, x, s))
    errors, std_errors = torch.cat(errors), torch.cat(std_errors)
    # The finite-set D is a self-normalized importance estimate of the true one; its
    # Monte-Carlo error is about sqrt(sum_i w_i^2 |y_i - D|^2), a few 1e-3 in the
    # bulk and larger in the tails, where fewer draws fall within a sigma-ball.
    tolerance = torch.clamp(5 * std_errors, min=0.03)
    assert (errors < tolerance).all(), (errors / tolerance).max()
    assert errors.mean() < 0.01, errors.mean()
    # sample moments: mean and covariance of the mixture, within MC error
    mix_mean = weights @ means
    second = (weights[:, None, None] * (covs + means[:, :, None] * means[:, None, :])).sum(0)
    mix_cov = second - torch.outer(mix_mean, mix_mean)
    torch.testing.assert_close(draws.mean(0), mix_mean, rtol=0, atol=0.02)
    torch.testing.assert_close(torch.cov(draws.T), mix_cov, rtol=0, atol=0.03)


@pytest.mark.parametrize("kind", ["full", "diag", "isotropic"])
def test_gmm_sample_moments(kind):
    gen = torch.Generator().manual_seed(19)
    means, covs, full_covs, weights = random_mixture(kind, 3, 4, gen)
    gm = GaussianMixtureDenoiser(means, covs, weights)
    n = 100_000
    draws = gm.sample(n, generator=gen)
    w = weights / weights.sum()
    mix_mean = w @ means
    mix_cov = (w[:, None, None] * (full_covs + means[:, :, None] * means[:, None, :])).sum(0)
    mix_cov -= torch.outer(mix_mean, mix_mean)
    # standard errors: sqrt(var / n) for the mean, about sqrt(2 var^2 / n) for covariances
    scale = mix_cov.diagonal().max().item()
    torch.testing.assert_close(draws.mean(0), mix_mean, rtol=0, atol=5 * (scale / n) ** 0.5)
    torch.testing.assert_close(torch.cov(draws.T), mix_cov, rtol=0, atol=8 * scale * (2 / n) ** 0.5)
    # single full-covariance component: the rotation out of the eigenbasis matters
    one = GaussianMixtureDenoiser(means[:1], full_covs[1:2], torch.ones(1))
    single = one.sample(n, generator=gen)
    c_scale = full_covs[1].diagonal().max().item()
    torch.testing.assert_close(torch.cov(single.T), full_covs[1], rtol=0, atol=8 * c_scale * (2 / n) ** 0.5)


def test_gmm_point_masses_equal_ideal_denoiser():
    """Zero covariances make the mixture a finite set: the two denoisers must agree."""
    gen = torch.Generator().manual_seed(16)
    points = torch.randn(12, 1, 2, 2, generator=gen, dtype=F64)
    gm = GaussianMixtureDenoiser(points, torch.zeros(12, dtype=F64), torch.ones(12, dtype=F64))
    ideal = IdealDenoiser(points)
    x = torch.randn(9, 1, 2, 2, generator=gen, dtype=F64)
    sig = torch.tensor([1e-3, 0.01, 0.1, 0.3, 1.0, 2.0, 5.0, 100.0, 1e6], dtype=F64)
    torch.testing.assert_close(gm(x, sig), ideal(x, sig), rtol=1e-9, atol=1e-10)
    assert gm(x, sig).shape == (9, 1, 2, 2)


def test_gmm_item_shape_flatten_restore():
    gen = torch.Generator().manual_seed(17)
    means, covs, full_covs, weights = random_mixture("full", 3, 4, gen)
    flat = GaussianMixtureDenoiser(means, covs, weights)
    shaped = GaussianMixtureDenoiser(means, covs, weights, item_shape=(1, 2, 2))
    x = torch.randn(5, 4, generator=gen, dtype=F64)
    out = shaped(x.reshape(5, 1, 2, 2), 0.4)
    assert out.shape == (5, 1, 2, 2)
    torch.testing.assert_close(out.reshape(5, 4), flat(x, 0.4), rtol=0, atol=0)
    assert shaped.sample(3, generator=gen).shape == (3, 1, 2, 2)
    assert flat(x.float(), 0.4).dtype == torch.float32
    # reproducible sampling
    a = flat.sample(7, generator=torch.Generator().manual_seed(3))
    b = flat.sample(7, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_gmm_chunking_is_invisible():
    gen = torch.Generator().manual_seed(18)
    means, covs, _, weights = random_mixture("full", 3, 5, gen)
    big = GaussianMixtureDenoiser(means, covs, weights)
    tiny = GaussianMixtureDenoiser(means, covs, weights, chunk_bytes=1)
    x = torch.randn(17, 5, generator=gen, dtype=F64)
    sig = torch.linspace(0.05, 3.0, 17, dtype=F64)
    torch.testing.assert_close(tiny(x, sig), big(x, sig), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(tiny.log_density(x, sig), big.log_density(x, sig), rtol=1e-13, atol=1e-13)


def test_gmm_bad_input():
    means = torch.zeros(2, 3, dtype=F64)
    gm = GaussianMixtureDenoiser(means, torch.ones(2, dtype=F64), torch.ones(2, dtype=F64))
    with pytest.raises(ValueError) as err:
        gm(torch.randn(4, 2), 1.0)
    assert "[4, 2]" in str(err.value) and "[3]" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"weights must be finite and >= 0"):
        GaussianMixtureDenoiser(means, torch.ones(2), torch.tensor([1.0, -0.5]))
    with pytest.raises(ValueError, match="sum to 0"):
        GaussianMixtureDenoiser(means, torch.ones(2), torch.zeros(2))
    with pytest.raises(ValueError, match=r"shape \[2\]"):
        GaussianMixtureDenoiser(means, torch.ones(2), torch.ones(3))
    asym = torch.eye(3, dtype=F64).repeat(2, 1, 1)
    asym[1, 0, 1] = 0.5
    with pytest.raises(ValueError, match="symmetric"):
        GaussianMixtureDenoiser(means, asym, torch.ones(2))
    indefinite = torch.eye(3, dtype=F64).repeat(2, 1, 1)
    indefinite[0, 2, 2] = -1.0
    with pytest.raises(ValueError, match="positive semi-definite; component 0"):
        GaussianMixtureDenoiser(means, indefinite, torch.ones(2))
    with pytest.raises(ValueError, match=">= 0"):
        GaussianMixtureDenoiser(means, -torch.ones(2, 3), torch.ones(2))
    with pytest.raises(ValueError, match=r"covariances have shape \[2, 4\]"):
        GaussianMixtureDenoiser(means, torch.ones(2, 4), torch.ones(2))
    with pytest.raises(ValueError, match="sigma = 0"):
        GaussianMixtureDenoiser(means, torch.zeros(2), torch.ones(2)).log_density(torch.zeros(1, 3))


# --------------------------------------------------------------------------- class-conditional forms


def _labelled_data(gen: torch.Generator, n: int = 60, d: int = 3, classes: int = 3):
    """Points whose class shifts their mean, so that classes really differ."""
    labels = torch.arange(n) % classes
    data = torch.randn(n, d, generator=gen, dtype=F64) + 2.0 * labels[:, None].to(F64)
    return data, labels


def test_conditional_ideal_equals_ideal_on_the_class_points():
    gen = torch.Generator().manual_seed(30)
    data, labels = _labelled_data(gen)
    den = IdealDenoiser(data, labels=labels)
    assert den.num_classes == 3
    sig = torch.tensor([1e-3, 0.1, 0.5, 1.0, 3.0, 30.0, float("inf"), 0.7, 0.2], dtype=F64)
    x = torch.randn(9, 3, generator=gen, dtype=F64) * 2 + 2
    rows = torch.tensor([0, 1, 2, 0, 1, 2, 1, -1, -1])  # -1: the null label
    got = den(x, sig, rows)
    for c in range(3):
        sel = rows == c
        alone = IdealDenoiser(data[labels == c])
        torch.testing.assert_close(got[sel], alone(x[sel], sig[sel]), rtol=1e-12, atol=1e-12)
        finite = sel & torch.isfinite(sig)
        ref = brute_force_posterior_mean(data[labels == c].numpy(), x[finite].numpy(), sig[finite].numpy())
        np.testing.assert_allclose(got[finite].numpy(), ref, rtol=1e-8, atol=1e-8)
    # sigma = inf: the mean of the row's class
    torch.testing.assert_close(got[6], data[labels == 1].mean(0), rtol=0, atol=1e-15)
    # null rows average over all the data
    ref_null = brute_force_posterior_mean(data.numpy(), x[7:].numpy(), sig[7:].numpy())
    np.testing.assert_allclose(got[7:].numpy(), ref_null, rtol=1e-8, atol=1e-8)
    # the network contract's one-hot rows (all-zero = null) give the same result
    one_hot = torch.zeros(9, 3)
    one_hot[rows >= 0, rows[rows >= 0]] = 1.0
    assert torch.equal(den(x, sig, one_hot), got)


def test_labels_leave_the_unconditional_ideal_bit_identical():
    gen = torch.Generator().manual_seed(31)
    data, labels = _labelled_data(gen)
    x = torch.randn(12, 3, generator=gen, dtype=F64)
    sig = torch.exp(torch.linspace(-4, 3, 12, dtype=F64))
    plain = IdealDenoiser(data)(x, sig)
    with_labels = IdealDenoiser(data, labels=labels)
    assert torch.equal(with_labels(x, sig), plain)
    assert torch.equal(with_labels(x, sig, torch.full((12,), -1)), plain)
    assert torch.equal(with_labels(x, sig, torch.zeros(12, 3)), plain)


def _conditional_mixture(gen: torch.Generator):
    means, covs, full_covs, _ = random_mixture("full", 4, 2, gen)
    joint = torch.tensor([[0.2, 0.1, 0.0, 0.05], [0.0, 0.15, 0.3, 0.2]], dtype=F64)
    return means, covs, full_covs, joint


def test_gmm_class_conditional_matches_tweedie_autograd():
    gen = torch.Generator().manual_seed(32)
    means, covs, full_covs, joint = _conditional_mixture(gen)
    gm = GaussianMixtureDenoiser(means, covs, class_weights=joint)
    assert gm.num_classes == 2
    torch.testing.assert_close(gm.class_priors, joint.sum(1) / joint.sum(), rtol=1e-15, atol=0)
    x = torch.randn(10, 2, generator=gen, dtype=F64) * 2
    for s in (0.05, 0.5, 2.0):
        sig = torch.full((10,), s, dtype=F64)
        rows = torch.tensor([0, 1, -1, 0, 1, 1, 0, -1, 0, 1])
        got_d, got_score, got_logp = gm(x, sig, rows), gm.score(x, sig, rows), gm.log_density(x, sig, rows)
        # null rows: the marginal weights, the column sums of the joint law
        for c, weights in ((0, joint[0]), (1, joint[1]), (-1, joint.sum(0))):
            sel, used = rows == c, weights > 0  # torch's Categorical clamps a zero probability to eps
            ref_d, ref_score, ref_logp = tweedie_reference(means[used], full_covs[used], weights[used], x[sel], s)
            torch.testing.assert_close(got_d[sel], ref_d, rtol=1e-7, atol=1e-8)
            torch.testing.assert_close(got_score[sel], ref_score, rtol=1e-7, atol=1e-7)
            torch.testing.assert_close(got_logp[sel], ref_logp, rtol=1e-9, atol=1e-9)
    # sigma = inf: the mean of the row's class; sigma = 0: x itself
    inf = gm(x[:3], float("inf"), torch.tensor([0, 1, -1]))
    for i, weights in enumerate((joint[0], joint[1], joint.sum(0))):
        torch.testing.assert_close(inf[i], weights @ means / weights.sum(), rtol=1e-14, atol=1e-15)
    assert torch.equal(gm(x, 0.0, torch.zeros(10, dtype=torch.long)), x)
    # the unconditional mixture with the marginal weights is the same law (bit for bit)
    marginal = GaussianMixtureDenoiser(means, covs, joint.sum(0) / joint.sum())
    sig = torch.linspace(0.1, 3.0, 10, dtype=F64)
    assert torch.equal(gm(x, sig), marginal(x, sig))
    assert torch.equal(gm(x, sig, torch.zeros(10, 2)), marginal(x, sig))


def test_gmm_sample_labeled_follows_the_joint_law():
    gen = torch.Generator().manual_seed(33)
    means, covs, full_covs, joint = _conditional_mixture(gen)
    gm = GaussianMixtureDenoiser(means, covs, class_weights=joint)
    n = 100_000
    x, labels = gm.sample_labeled(n, generator=gen)
    assert x.shape == (n, 2) and labels.dtype == torch.long
    priors = joint.sum(1) / joint.sum()
    for c in range(2):
        sel = x[labels == c]
        assert abs(sel.shape[0] / n - priors[c].item()) < 5 * (0.25 / n) ** 0.5
        p = joint[c] / joint[c].sum()
        mean = p @ means
        cov = (p[:, None, None] * (full_covs + means[:, :, None] * means[:, None, :])).sum(0) - torch.outer(mean, mean)
        scale = cov.diagonal().max().item()
        torch.testing.assert_close(sel.mean(0), mean, rtol=0, atol=5 * (scale / sel.shape[0]) ** 0.5)
        torch.testing.assert_close(torch.cov(sel.T), cov, rtol=0, atol=8 * scale * (2 / sel.shape[0]) ** 0.5)


def test_conditional_bad_input():
    data = torch.randn(6, 2, dtype=F64)
    labels = torch.tensor([0, 0, 1, 1, 3, 3])  # class 2 has no points
    den = IdealDenoiser(data, labels=labels)
    x, s = torch.zeros(2, 2, dtype=F64), 1.0
    with pytest.raises(ValueError, match="class 2 has no data points"):
        den(x, s, torch.tensor([2, 0]))
    with pytest.raises(ValueError, match=r"label 4 is out of range; this denoiser takes class indices in -1\.\.3"):
        den(x, s, torch.tensor([4, 0]))
    with pytest.raises(ValueError, match="one-hot or all zero"):
        den(x, s, torch.tensor([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"one-hot labels have shape \[2, 3\]; expected \[2, 4\]"):
        den(x, s, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="class indices"):
        den(x, s, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="no classes"):
        IdealDenoiser(data)(x, s, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="one per data point"):
        IdealDenoiser(data, labels=torch.tensor([0.0, 1, 0, 1, 0, 1]))
    with pytest.raises(ValueError, match=">= 0"):
        IdealDenoiser(data, labels=torch.tensor([0, -1, 0, 1, 0, 1]))
    with pytest.raises(ValueError, match="num_classes must be an int >= 4"):
        IdealDenoiser(data, labels=labels, num_classes=3)
    means = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(ValueError, match="not both"):
        GaussianMixtureDenoiser(means, torch.ones(3), torch.ones(3), class_weights=torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"class_weights must have shape \[num_classes, 3\]"):
        GaussianMixtureDenoiser(means, torch.ones(3), class_weights=torch.ones(2, 4))
    with pytest.raises(ValueError, match="row 1 sums to 0"):
        GaussianMixtureDenoiser(means, torch.ones(3), class_weights=torch.tensor([[1.0, 0, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="sample_labeled needs"):
        GaussianMixtureDenoiser(means, torch.ones(3)).sample_labeled(3)
