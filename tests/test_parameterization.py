"""The parameterization (edm_space/parameterization.py) of every preset against closed forms.

The references are the formulas of docs/design.md's preset table and EDM Table 1,
written out here in torch / numpy (float64); derivatives come from autograd of
those written-out formulas, inverses from a scalar root finder.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import scipy.stats
import torch

import presets
from conftest import ddpm_sigma_table_np, iddpm_u_np
from edm_space.parameterization import (
    PREDICTION_KINDS,
    DiscreteSigma,
    denoised_to_prediction,
    prediction_to_denoised,
)

F64 = torch.float64
ALL = presets.names()
EPS_FAMILY = ("vp", "iddpm", "ddpm", "ddim")
FLOW_FAMILY = ("flow", "sd3")
BETA_D, BETA_MIN = 19.9, 0.1
SD = 0.5

_DDPM_TABLE = torch.from_numpy(ddpm_sigma_table_np())
_DDPM_LOG = _DDPM_TABLE.clamp_min(1e-300).log()


# --------------------------------------------------------------------------- references


def ref_sigma(name: str, t: torch.Tensor) -> torch.Tensor:
    """sigma(t) from docs/design.md's table (differentiable in t)."""
    if name in ("edm", "iddpm"):
        return t
    if name == "vp":
        return torch.sqrt(torch.expm1(0.5 * BETA_D * t**2 + BETA_MIN * t))
    if name == "ve":
        return torch.sqrt(t)
    if name in FLOW_FAMILY:
        return t / (1 - t)
    if name in ("ddpm", "ddim"):
        # Between integers k >= 1: log sigma linear in t through the table values.
        k = torch.floor(t.detach()).clamp(1, 999).long()
        frac = t - k
        return torch.exp(_DDPM_LOG[k] + frac * (_DDPM_LOG[k + 1] - _DDPM_LOG[k]))
    raise AssertionError(name)


def ref_scale(name: str, t: torch.Tensor) -> torch.Tensor:
    if name in ("edm", "iddpm", "ve"):
        return 1 + 0 * t
    if name == "vp":
        return 1 / torch.sqrt(torch.exp(0.5 * BETA_D * t**2 + BETA_MIN * t))
    if name in ("ddpm", "ddim"):
        # s = sqrt(abar) = 1/sqrt(1 + sigma^2)
        return 1 / torch.sqrt(1 + ref_sigma(name, t) ** 2)
    if name in FLOW_FAMILY:
        return 1 - t
    raise AssertionError(name)


def random_times(name: str, n: int = 64, seed: int = 0) -> torch.Tensor:
    """Random t inside the preset's domain (for ddpm: off the integers, t in (1, 1000))."""
    rng = np.random.default_rng(seed)
    if name in ("edm", "iddpm"):
        t = np.exp(rng.uniform(math.log(0.002), math.log(80), n))
    elif name == "vp":
        t = rng.uniform(1e-5, 1.0, n)
    elif name == "ve":
        t = np.exp(rng.uniform(math.log(4e-4), math.log(1e4), n))
    elif name in FLOW_FAMILY:
        t = rng.uniform(1e-3, 0.999, n)
    else:
        t = rng.uniform(1.0, 1000.0, n)
        t = np.where(np.abs(t - np.round(t)) < 1e-3, t + 0.25, t)
        t = np.clip(t, 1.001, 999.999)
    return torch.tensor(t, dtype=F64)


def random_sigmas(name: str, n: int = 64, seed: int = 1) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    lo, hi = {
        "edm": (0.002, 80.0),
        "vp": (0.0011, 150.0),
        "ve": (0.02, 100.0),
        "iddpm": (0.0065, 2e4),
        "ddpm": (0.0101, 157.0),
        "ddim": (0.0101, 157.0),
        "flow": (1e-4, 1e4),
        "sd3": (1e-4, 1e4),
    }[name]
    return torch.tensor(np.exp(rng.uniform(math.log(lo), math.log(hi), n)), dtype=F64)


def autograd_deriv(fn, t: torch.Tensor) -> torch.Tensor:
    t = t.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(t).sum(), t)
    return grad.detach()


def vp_t_of_sigma_rootfind(sigma: float) -> float:
    """t with sqrt(exp(beta_d t^2/2 + beta_min t) - 1) = sigma, by bracketing root search."""
    target = math.log1p(sigma**2)
    return scipy.optimize.brentq(lambda t: 0.5 * BETA_D * t**2 + BETA_MIN * t - target, 0.0, 2.0, xtol=1e-15, rtol=1e-15)


def ref_precond(name: str, sigma: torch.Tensor):
    """(c_skip, c_out, c_in, c_noise) of docs/design.md's table."""
    one = torch.ones_like(sigma)
    if name == "edm":
        return (
            SD**2 / (sigma**2 + SD**2),
            sigma * SD / torch.sqrt(sigma**2 + SD**2),
            1 / torch.sqrt(sigma**2 + SD**2),
            torch.log(sigma) / 4,
        )
    if name == "vp":
        t = torch.tensor([vp_t_of_sigma_rootfind(float(s)) for s in sigma], dtype=F64)
        return one, -sigma, 1 / torch.sqrt(sigma**2 + 1), 999 * t
    if name == "ve":
        return one, sigma, one, torch.log(sigma / 2)
    if name == "iddpm":
        u = iddpm_u_np()
        M = len(u) - 1
        j = np.abs(u[None, :] - sigma.numpy()[:, None]).argmin(axis=1)
        return one, -sigma, 1 / torch.sqrt(sigma**2 + 1), torch.tensor(M - 1 - j, dtype=F64)
    if name in ("ddpm", "ddim"):
        raise AssertionError("ddpm c_noise is checked at integer t")
    if name in FLOW_FAMILY:
        return 1 / (1 + sigma), -sigma / (1 + sigma), 1 / (1 + sigma), sigma / (1 + sigma)
    raise AssertionError(name)


def ref_loss_weight(name: str, sigma: torch.Tensor) -> torch.Tensor:
    if name == "edm":
        return (sigma**2 + SD**2) / (sigma * SD) ** 2
    if name in FLOW_FAMILY:
        return ((1 + sigma) / sigma) ** 2
    return 1 / sigma**2


def ref_target(name: str, x0: torch.Tensor, n: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """What each family's papers call the network's target."""
    s = sigma.reshape(-1, *([1] * (x0.ndim - 1)))
    if name == "edm":
        # (x0 - c_skip x_hat)/c_out with EDM's coefficients, simplified by hand.
        return (s * x0 / SD - SD * n) / torch.sqrt(s**2 + SD**2)
    if name in EPS_FAMILY:
        return n  # eps-prediction
    if name == "ve":
        return -n  # F = sigma * score = -eps
    if name in FLOW_FAMILY:
        return n - x0  # velocity eps - x0
    raise AssertionError(name)


def close(a, b, rtol=1e-10, atol=0.0):
    torch.testing.assert_close(torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64), rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", ALL)
def test_sigma_and_scale_closed_forms(name):
    f = presets.get(name)
    t = random_times(name)
    close(f.sigma(t), ref_sigma(name, t), rtol=1e-11)
    close(f.scale(t), ref_scale(name, t), rtol=1e-11)
    # float input is accepted and float64 comes back
    t0 = float(t[3])
    out = f.sigma(t0)
    assert out.dtype == F64
    close(out, ref_sigma(name, torch.tensor(t0, dtype=F64)), rtol=1e-11)


@pytest.mark.parametrize("name", ("ddpm", "ddim"))
def test_ddpm_sigma_at_integer_times(name, ddpm_abar):
    f = presets.get(name)
    t = torch.arange(0, 1001, dtype=F64)
    expected = np.sqrt(1 / ddpm_abar - 1)
    assert float(f.sigma(torch.tensor(0.0, dtype=F64))) == 0.0  # abar(0) = 1: the clean sample
    close(f.sigma(t), torch.from_numpy(expected), rtol=1e-12, atol=0.0)
    close(f.scale(t), torch.from_numpy(np.sqrt(ddpm_abar)), rtol=1e-12)
    # spot values of Ho et al.'s chain: abar(1) = 1 - 1e-4
    close(f.sigma(1.0), math.sqrt(1 / (1 - 1e-4) - 1), rtol=1e-12)


@pytest.mark.parametrize("name", ("ddpm", "ddim"))
def test_ddpm_log_sigma_linear_between_integers(name, ddpm_sigma_table):
    f = presets.get(name)
    rng = np.random.default_rng(5)
    k = rng.integers(1, 1000, 50)
    frac = rng.uniform(0, 1, 50)
    t = torch.tensor(k + frac, dtype=F64)
    expected = np.exp((1 - frac) * np.log(ddpm_sigma_table[k]) + frac * np.log(ddpm_sigma_table[k + 1]))
    close(f.sigma(t), torch.from_numpy(expected), rtol=1e-11)


@pytest.mark.parametrize("name", ALL)
def test_sigma_deriv_matches_autograd(name):
    f = presets.get(name)
    t = random_times(name, seed=11)
    close(f.sigma_deriv(t), autograd_deriv(lambda u: ref_sigma(name, u), t), rtol=1e-9)


@pytest.mark.parametrize("name", ALL)
def test_scale_deriv_matches_autograd(name):
    f = presets.get(name)
    t = random_times(name, seed=12)
    close(f.scale_deriv(t), autograd_deriv(lambda u: ref_scale(name, u), t), rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize("name", ALL)
def test_derivatives_match_central_differences(name):
    """A second method: central differences of the written-out closed forms."""
    f = presets.get(name)
    t = random_times(name, n=16, seed=13)
    h = 1e-6 * t.abs().clamp_min(1e-3)
    if name in ("ddpm", "ddim"):
        h = torch.full_like(t, 1e-5)  # stays inside one log-linear segment
    fd_sigma = (ref_sigma(name, t + h) - ref_sigma(name, t - h)) / (2 * h)
    fd_scale = (ref_scale(name, t + h) - ref_scale(name, t - h)) / (2 * h)
    close(f.sigma_deriv(t), fd_sigma, rtol=1e-6)
    close(f.scale_deriv(t), fd_scale, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", ("ddpm", "ddim"))
def test_ddpm_sigma_deriv_at_integers_is_mean_of_one_sided_slopes(name, ddpm_sigma_table):
    f = presets.get(name)
    k = np.arange(2, 1000)
    sig = ddpm_sigma_table
    left = np.log(sig[k] / sig[k - 1]) * sig[k]  # d sigma/dt from the segment [k-1, k] at t = k
    right = np.log(sig[k + 1] / sig[k]) * sig[k]  # ... from the segment [k, k+1]
    close(f.sigma_deriv(torch.tensor(k, dtype=F64)), torch.from_numpy(0.5 * (left + right)), rtol=1e-10)
    # and the one-sided slopes themselves, by central differences just off the integer
    h = 1e-7
    kt = torch.tensor(k, dtype=F64)
    d_right = (f.sigma(kt + 2 * h) - f.sigma(kt + h)) / h
    d_left = (f.sigma(kt - h) - f.sigma(kt - 2 * h)) / h
    close(0.5 * (d_left + d_right), f.sigma_deriv(kt), rtol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_sigma_inv_round_trip(name):
    f = presets.get(name)
    t = random_times(name, seed=21)
    close(f.sigma_inv(f.sigma(t)), t, rtol=1e-9)
    close(f.sigma_inv(ref_sigma(name, t)), t, rtol=1e-9)
    if name in ("ddpm", "ddim"):
        ti = torch.arange(1, 1001, dtype=F64)
        close(f.sigma_inv(f.sigma(ti)), ti, rtol=1e-11)
        # below t = 1, between the clean sample sigma(0) = 0 and the first level
        tl = torch.linspace(0.01, 0.99, 50, dtype=F64)
        close(f.sigma_inv(f.sigma(tl)), tl, rtol=1e-9)


@pytest.mark.parametrize("name", ("ddpm", "ddim"))
def test_ddpm_sigma_below_one_is_continuous_and_increasing(name, ddpm_sigma_table):
    f = presets.get(name)
    t = torch.linspace(0, 2, 2001, dtype=F64)
    sig = f.sigma(t)
    assert float(sig[0]) == 0.0 and bool((sig[1:] > sig[:-1]).all())
    assert float(f.sigma(1.0)) == pytest.approx(ddpm_sigma_table[1], rel=1e-14)
    # no jump at t = 1 in sigma or in sigma'
    h = 1e-9
    assert float(f.sigma(1 - h)) == pytest.approx(ddpm_sigma_table[1], rel=1e-6)
    assert float(f.sigma_deriv(1 - h)) == pytest.approx(float(f.sigma_deriv(1 + h)), rel=1e-6)


def test_vp_sigma_inv_against_root_finder():
    f = presets.get("vp")
    for s in (0.0011, 0.01, 0.3, 1.0, 7.0, 80.0, 152.0):
        assert float(f.sigma_inv(s)) == pytest.approx(vp_t_of_sigma_rootfind(s), rel=1e-11)


def test_flow_t_equals_one_is_infinite_sigma():
    for name in FLOW_FAMILY:
        f = presets.get(name)
        assert float(f.sigma_inv(math.inf)) == 1.0
        c_skip, c_out, c_in, c_noise = f.precond(torch.tensor([math.inf], dtype=F64))
        assert (float(c_skip), float(c_out), float(c_in), float(c_noise)) == (0.0, -1.0, 0.0, 1.0)


# --------------------------------------------------------------------------- drift


@pytest.mark.parametrize("name", ALL)
def test_drift_is_edm_eq4(name):
    """dx/dt = (sigma'/sigma + s'/s) x - (s sigma'/sigma) D with the written-out schedules."""
    f = presets.get(name)
    t = random_times(name, n=8, seed=31)
    sigma, s = ref_sigma(name, t), ref_scale(name, t)
    ds = autograd_deriv(lambda u: ref_sigma(name, u), t)
    dscale = autograd_deriv(lambda u: ref_scale(name, u), t)
    x = torch.randn(8, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    D = torch.randn(8, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    a = (ds / sigma + dscale / s)[:, None]
    b = (ds * s / sigma)[:, None]
    expected = a * x - b * D
    got = torch.stack([f.drift(x[i], t[i], D[i]) for i in range(8)])
    close(got, expected, rtol=1e-9, atol=1e-12)
    close(f.score(x, sigma, D), (D - x) / sigma[:, None] ** 2, rtol=1e-12)


# --------------------------------------------------------------------------- preconditioning


@pytest.mark.parametrize("name", [n for n in ALL if n not in ("ddpm", "ddim")])
def test_preconditioning_closed_forms(name):
    f = presets.get(name)
    sigma = random_sigmas(name)
    got = f.precond(sigma)
    want = ref_precond(name, sigma)
    for label, g, w in zip(("c_skip", "c_out", "c_in", "c_noise"), got, want):
        torch.testing.assert_close(g.to(F64), w.to(F64), rtol=1e-10, atol=1e-12, msg=lambda m: f"{name} {label}: {m}")


def test_iddpm_c_noise_at_the_levels_is_the_reversed_index(iddpm_u):
    f = presets.get("iddpm")
    M = len(iddpm_u) - 1
    j = np.arange(M)
    c_noise = f.precond(torch.from_numpy(iddpm_u[:M]))[3]
    close(c_noise, torch.tensor(M - 1 - j, dtype=F64), rtol=0, atol=0)


@pytest.mark.parametrize("name", ("ddpm", "ddim"))
def test_ddpm_preconditioning_at_integer_timesteps(name, ddpm_sigma_table):
    f = presets.get(name)
    t = np.arange(1, 1001)
    sigma = torch.from_numpy(ddpm_sigma_table[t])
    c_skip, c_out, c_in, c_noise = f.precond(sigma)
    close(c_skip, torch.ones_like(sigma), rtol=0)
    close(c_out, -sigma, rtol=1e-14)
    close(c_in, 1 / torch.sqrt(sigma**2 + 1), rtol=1e-13)
    close(c_noise, torch.tensor(t - 1, dtype=F64), rtol=0, atol=1e-8)  # the 0-based index


@pytest.mark.parametrize("name", ALL)
def test_loss_weight_closed_form_and_unit_effective_weight(name):
    f = presets.get(name)
    sigma = random_sigmas(name, seed=41)
    lam = f.loss_weight(sigma)
    close(lam, ref_loss_weight(name, sigma), rtol=1e-12)
    c_out = f.precond(sigma)[1]
    close(lam * c_out**2, torch.ones_like(sigma), rtol=1e-12)


# --------------------------------------------------------------------------- training target and loss


def _batch(seed: int, b: int = 6):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(b, 3, 4, dtype=F64, generator=g)
    n = torch.randn(b, 3, 4, dtype=F64, generator=g)
    return x0, n


@pytest.mark.parametrize("name", ALL)
def test_training_target_is_the_family_target(name):
    f = presets.get(name)
    x0, n = _batch(3)
    sigma = random_sigmas(name, n=6, seed=51)
    close(f.training_target(x0, n, sigma), ref_target(name, x0, n, sigma), rtol=1e-9, atol=1e-12)
    # and it is (x0 - c_skip x_hat)/c_out with the table's coefficients
    if name not in ("ddpm", "ddim"):
        c_skip, c_out, _, _ = ref_precond(name, sigma)
        e = lambda v: v.reshape(-1, 1, 1)  # noqa: E731
        x_hat = x0 + e(sigma) * n
        close(f.training_target(x0, n, sigma), (x0 - e(c_skip) * x_hat) / e(c_out), rtol=1e-9, atol=1e-12)


def _ref_c_in(name, sigma):
    if name == "edm":
        return 1 / torch.sqrt(sigma**2 + SD**2)
    if name == "ve":
        return torch.ones_like(sigma)
    if name in FLOW_FAMILY:
        return 1 / (1 + sigma)
    return 1 / torch.sqrt(sigma**2 + 1)


@pytest.mark.parametrize("name", ALL)
def test_loss_with_perfect_and_offset_network(name):
    f = presets.get(name)
    x0, n = _batch(4)
    sigma = random_sigmas(name, n=6, seed=61)
    target = ref_target(name, x0, n, sigma)
    seen = {}

    def perfect(x_in, c_noise, labels=None):
        seen["x_in"], seen["c_noise"], seen["labels"] = x_in, c_noise, labels
        return target.clone()

    loss = f.loss(perfect, x0, sigma=sigma, noise=n)
    assert loss.shape == (6,)
    assert float(loss.abs().max()) < 1e-18
    # the network sees c_in * x_hat
    x_hat = x0 + sigma.reshape(-1, 1, 1) * n
    close(seen["x_in"], _ref_c_in(name, sigma).reshape(-1, 1, 1) * x_hat, rtol=1e-12)
    assert seen["c_noise"].shape == (6,)

    assert seen["labels"] is None  # the one network contract: F(x, c_noise, labels), labels None when unconditional

    loss_off = f.loss(lambda x_in, c_noise, labels: target + 1.0, x0, sigma=sigma, noise=n)
    # lambda * c_out^2 * mean(1^2) = 1 per example
    close(loss_off, torch.ones(6, dtype=F64), rtol=1e-9)


# --------------------------------------------------------------------------- p_train

N_DRAWS = 200_000


def _draws(name, seed=0):
    f = presets.get(name)
    s = f.sample_training_sigma(N_DRAWS, generator=torch.Generator().manual_seed(seed))
    assert s.shape == (N_DRAWS,) and s.dtype == F64
    return s.numpy()


def _mean_std_within(x, mean, std, k=4.0):
    n = len(x)
    assert abs(x.mean() - mean) < k * std / math.sqrt(n), (x.mean(), mean)
    assert abs(x.std(ddof=1) - std) < k * std / math.sqrt(2 * (n - 1)), (x.std(ddof=1), std)


def test_p_train_edm_lognormal():
    _mean_std_within(np.log(_draws("edm")), -1.2, 1.2)
    assert scipy.stats.kstest(np.log(_draws("edm", 1)), "norm", args=(-1.2, 1.2)).pvalue > 1e-4


def test_p_train_vp_uniform_time():
    s = _draws("vp")
    t = (np.sqrt(BETA_MIN**2 + 2 * BETA_D * np.log1p(s**2)) - BETA_MIN) / BETA_D  # closed-form inverse
    assert t.min() >= 1e-5 * (1 - 1e-9) and t.max() <= 1 + 1e-12
    assert scipy.stats.kstest(t, "uniform", args=(1e-5, 1 - 1e-5)).pvalue > 1e-4
    _mean_std_within(t, (1 + 1e-5) / 2, (1 - 1e-5) / math.sqrt(12))


def test_p_train_ve_log_uniform():
    ls = np.log(_draws("ve"))
    lo, hi = math.log(0.02), math.log(100)
    assert ls.min() >= lo - 1e-12 and ls.max() <= hi + 1e-12
    assert scipy.stats.kstest(ls, "uniform", args=(lo, hi - lo)).pvalue > 1e-4


def test_p_train_iddpm_levels(iddpm_u):
    s = _draws("iddpm")
    M = len(iddpm_u) - 1
    # exact membership in {u_0, ..., u_{M-1}} (never u_M = 0)
    ascending = iddpm_u[:M][::-1]  # u_{M-1} < ... < u_0
    pos = np.clip(np.searchsorted(ascending, s), 1, M - 1)
    nearest = np.where(np.abs(ascending[pos - 1] - s) < np.abs(ascending[pos] - s), pos - 1, pos)
    np.testing.assert_allclose(ascending[nearest], s, rtol=1e-12)
    j = M - 1 - nearest
    counts = np.bincount(j, minlength=M)
    assert counts[0] > 0 and counts[M - 1] > 0
    assert scipy.stats.chisquare(counts).pvalue > 1e-4
    assert (s > 0).all()


@pytest.mark.parametrize("name", ("ddpm", "ddim"))
def test_p_train_ddpm_integer_timesteps(name, ddpm_sigma_table):
    s = _draws(name)
    table = ddpm_sigma_table  # increasing in t
    pos = np.clip(np.searchsorted(table, s), 1, 1000)
    nearest = np.where(np.abs(table[pos - 1] - s) < np.abs(table[pos] - s), pos - 1, pos)
    np.testing.assert_allclose(table[nearest], s, rtol=1e-12)
    assert nearest.min() >= 1 and nearest.max() <= 1000  # t in 1..T, never the clean t = 0
    counts = np.bincount(nearest, minlength=1001)[1:]
    assert scipy.stats.chisquare(counts).pvalue > 1e-4


def test_p_train_flow_uniform_time():
    s = _draws("flow")
    t = s / (1 + s)
    assert scipy.stats.kstest(t, "uniform").pvalue > 1e-4
    _mean_std_within(t, 0.5, 1 / math.sqrt(12))


def test_p_train_sd3_logit_normal():
    s = _draws("sd3")
    t = s / (1 + s)
    logit = np.log(t / (1 - t))  # = ln sigma
    _mean_std_within(logit, 0.0, 1.0)
    assert scipy.stats.kstest(logit, "norm").pvalue > 1e-4


# --------------------------------------------------------------------------- prediction conversions


def _prediction_case(sigma_kind: str):
    g = torch.Generator().manual_seed(7)
    x0 = torch.randn(5, 2, 3, dtype=F64, generator=g)
    eps = torch.randn(5, 2, 3, dtype=F64, generator=g)
    if sigma_kind == "vector":
        sigma = torch.tensor([0.01, 0.3, 1.0, 7.0, 90.0], dtype=F64)
        s = sigma.reshape(-1, 1, 1)
    else:
        sigma = 0.7
        s = torch.tensor(0.7, dtype=F64)
    x_hat = x0 + s * eps
    truth = {
        "x0": x0,
        "eps": eps,
        "v": (eps - s * x0) / torch.sqrt(1 + s**2),
        "velocity": eps - x0,
        "score": -eps / s,
    }
    return x0, x_hat, sigma, truth


@pytest.mark.parametrize("sigma_kind", ("vector", "scalar"))
@pytest.mark.parametrize("kind", ("x0", "eps", "v", "velocity", "score"))
def test_prediction_conversions_both_directions(kind, sigma_kind):
    x0, x_hat, sigma, truth = _prediction_case(sigma_kind)
    assert kind in PREDICTION_KINDS
    close(prediction_to_denoised(kind, truth[kind], x_hat, sigma), x0, rtol=1e-10, atol=1e-12)
    close(denoised_to_prediction(kind, x0, x_hat, sigma), truth[kind], rtol=1e-10, atol=1e-12)


def test_prediction_kinds_are_the_five():
    assert set(PREDICTION_KINDS) == {"x0", "eps", "v", "velocity", "score"}


@pytest.mark.parametrize("fn", (prediction_to_denoised, denoised_to_prediction))
def test_unknown_prediction_kind(fn):
    x = torch.zeros(2, 3, dtype=F64)
    with pytest.raises(ValueError) as err:
        fn("epsilon_hat", x, x, torch.ones(2, dtype=F64))
    msg = str(err.value)
    assert "epsilon_hat" in msg and "\n" not in msg
    for kind in ("x0", "eps", "v", "velocity", "score"):
        assert kind in msg


# --------------------------------------------------------------------------- parts


def test_discrete_sigma_table_matches_ho(ddpm_abar):
    d = DiscreteSigma()
    close(d.sigmas, torch.from_numpy(np.sqrt(1 / ddpm_abar - 1)), rtol=1e-12)
    assert d.sigmas.dtype == F64 and len(d.sigmas) == 1001
