"""samplers.discretizations.time_steps against the formulas of EDM Table 1 / docs/design.md.

Each discretization's sigma levels are written out here in numpy (float64) and
compared with sigma(t_i) of what time_steps returns, on the discretization's own
preset (where t itself is also checked) and on other presets.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import presets
import samplers
from conftest import finite_set_denoiser, gaussian_denoiser, iddpm_u_np
from samplers.discretizations import sigma_range, time_steps

F64 = torch.float64
ALL_PRESETS = presets.names()
ALL_NAMES = ["edm", "vp", "ve", "iddpm", "ddpm", "uniform-t", "log-sigma", "time-quadratic", "time-uniform", "logsnr"]
EPS_S = 1e-3


def vp_sigma_np(t, beta_d=19.9, beta_min=0.1):
    return np.sqrt(np.expm1(0.5 * beta_d * t**2 + beta_min * t))


# The discretizations' own sigma ranges (EDM's ablation sampler defaults).
OWN = {
    "edm": (0.002, 80.0),
    "vp": (float(vp_sigma_np(1e-3)), float(vp_sigma_np(1.0))),
    "ve": (0.02, 100.0),
    "iddpm": (0.002, 81.0),
}
OWN["time-uniform"] = OWN["time-quadratic"] = OWN["vp"]  # DPM-Solver's steps between t = 1 and 1e-3 of vp


def frac(N):
    return np.arange(N) / (N - 1) if N > 1 else np.zeros(1)


def ref_edm(N, lo, hi, rho=7.0):
    return (hi ** (1 / rho) + frac(N) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho


def ref_vp(N, lo, hi, power=1):
    # fit beta_d, beta_min so that sigma(eps_s) = lo and sigma(1) = hi:
    #   beta_d t^2/2 + beta_min t = ln(1 + sigma^2) at t = eps_s and t = 1
    A = np.array([[EPS_S**2 / 2, EPS_S], [0.5, 1.0]])
    b = np.array([np.log1p(lo**2), np.log1p(hi**2)])
    beta_d, beta_min = np.linalg.solve(A, b)
    # DPM-Solver's time steps: t^(1/power) uniform from 1 to eps_s^(1/power) (power 1: time-uniform, 2: time-quadratic)
    t = (1 + frac(N) * (EPS_S ** (1 / power) - 1)) ** power
    return vp_sigma_np(t, beta_d, beta_min)


def ref_time_quadratic(N, lo, hi):
    return ref_vp(N, lo, hi, power=2)


def ref_ve(N, lo, hi):
    return np.sqrt(hi**2 * (lo**2 / hi**2) ** frac(N))


def ref_iddpm(N, lo, hi, **constants):
    u = iddpm_u_np(**constants)
    inside = u[(u >= lo) & (u <= hi)]
    L = len(inside)
    idx = np.round((L - 1) / (N - 1) * np.arange(N)).astype(np.int64) if N > 1 else np.zeros(1, np.int64)
    return inside[idx]


def ref_log_sigma(N, lo, hi):
    return np.exp(np.log(hi) + frac(N) * (np.log(lo) - np.log(hi)))


REF = {"edm": ref_edm, "vp": ref_vp, "ve": ref_ve, "iddpm": ref_iddpm, "log-sigma": ref_log_sigma, "time-quadratic": ref_time_quadratic}


def expected_range(f, name):
    lo, hi = OWN.get(name, (f.sigma_min, f.sigma_max))
    if name in ("log-sigma", "logsnr") and not (lo > 0 and math.isfinite(hi)):
        lo, hi = OWN["edm"]
    return max(lo, f.support[0]), min(hi, f.support[1])


def check_levels(f, t, levels, rtol=1e-10):
    t = t.numpy()
    assert len(t) == len(levels) + 1 and t[-1] == 0.0
    np.testing.assert_allclose(f.sigma(torch.from_numpy(t[:-1])).numpy(), levels, rtol=rtol)


# --------------------------------------------------------------------------- each formula


@pytest.mark.parametrize("N", (1, 2, 7, 18, 64))
def test_edm_rho_spacing(N):
    f = presets.get("edm")
    t = time_steps(f, N, "edm")
    want = ref_edm(N, 0.002, 80.0)
    np.testing.assert_allclose(t[:-1].numpy(), want, rtol=1e-12)  # sigma(t) = t
    assert t[-1] == 0
    # other rho and explicit range
    t = time_steps(f, N, "edm", sigma_min=0.01, sigma_max=20.0, rho=3.0)
    np.testing.assert_allclose(t[:-1].numpy(), ref_edm(N, 0.01, 20.0, 3.0), rtol=1e-12)


@pytest.mark.parametrize("N", (2, 10, 256))
def test_vp_discretization_on_vp(N):
    f = presets.get("vp")
    t = time_steps(f, N, "vp")
    # with the default range the fitted schedule is the vp preset's own: t linear from 1 to eps_s
    np.testing.assert_allclose(t[:-1].numpy(), 1 + frac(N) * (EPS_S - 1), rtol=1e-9)
    check_levels(f, t, ref_vp(N, *OWN["vp"]))


@pytest.mark.parametrize("preset", ("edm", "ve", "flow"))
def test_vp_discretization_fitted_betas(preset):
    f = presets.get(preset)
    N = 12
    lo, hi = expected_range(f, "vp")
    check_levels(f, time_steps(f, N, "vp"), ref_vp(N, lo, hi))
    check_levels(f, time_steps(f, N, "vp", sigma_min=0.05, sigma_max=30.0), ref_vp(N, 0.05, 30.0))


@pytest.mark.parametrize("N", (2, 10, 100))
def test_ve_geometric(N):
    f = presets.get("ve")
    t = time_steps(f, N, "ve")
    want = ref_ve(N, 0.02, 100.0)
    np.testing.assert_allclose(t[:-1].numpy(), want**2, rtol=1e-11)  # sigma = sqrt(t)
    check_levels(f, t, want)
    # geometric: constant ratio between consecutive levels
    r = want[1:] / want[:-1]
    np.testing.assert_allclose(f.sigma(t[1:-1]).numpy() / f.sigma(t[:-2]).numpy(), r, rtol=1e-10)


@pytest.mark.parametrize("N", (1, 2, 10, 100, 333))
def test_iddpm_index_rounding(N):
    f = presets.get("iddpm")
    t = time_steps(f, N, "iddpm")
    lo, hi = max(0.002, f.support[0]), min(81.0, f.support[1])
    want = ref_iddpm(N, lo, hi)
    np.testing.assert_allclose(t[:-1].numpy(), want, rtol=1e-12)  # sigma(t) = t
    assert t[-1] == 0
    # every level is one of the u_j
    u = iddpm_u_np()
    assert np.abs(t[:-1].numpy()[:, None] - u[None, :]).min(axis=1).max() <= 1e-12 * 100


def test_iddpm_preset_snaps_any_discretization_to_its_levels():
    """EDM's ablation sampler: t_i = sigma^-1(round_sigma(sigma_i)), round_sigma = nearest u_j."""
    f = presets.get("iddpm")
    u = iddpm_u_np()
    lo, hi = expected_range(f, "edm")
    levels = ref_edm(18, lo, hi)
    snapped = u[np.abs(levels[:, None] - u[None, :]).argmin(axis=1)]
    check_levels(f, time_steps(f, 18, "edm"), snapped, rtol=1e-12)


def test_iddpm_discretization_on_other_presets():
    for preset in ("edm", "vp"):
        f = presets.get(preset)
        lo, hi = expected_range(f, "iddpm")
        check_levels(f, time_steps(f, 25, "iddpm"), ref_iddpm(25, lo, hi))


@pytest.mark.parametrize("N", (1, 7, 10, 50, 1000))
def test_ddpm_leading_stride(N, ddpm_sigma_table):
    f = presets.get("ddpm")
    t = time_steps(f, N, "ddpm").numpy()
    i = np.arange(N)
    want = (N - 1 - i) * (1000 // N) + 1
    np.testing.assert_allclose(t[:-1], want, rtol=0, atol=1e-9)
    assert t[-1] == 0
    # on another formulation: the same sigma levels, through its own sigma^-1
    g = presets.get("edm")
    check_levels(g, time_steps(g, N, "ddpm"), ddpm_sigma_table[want])


def test_ddpm_too_many_steps():
    with pytest.raises(ValueError, match="1001"):
        time_steps(presets.get("ddpm"), 1001, "ddpm")


@pytest.mark.parametrize("preset", ("edm", "ve", "flow"))
def test_log_sigma_uniform(preset):
    f = presets.get(preset)
    N = 9
    t = time_steps(f, N, "log-sigma")
    lo, hi = expected_range(f, "log-sigma")
    check_levels(f, t, ref_log_sigma(N, lo, hi))
    ls = np.log(f.sigma(t[:-1]).numpy())
    np.testing.assert_allclose(np.diff(ls), np.full(N - 1, (math.log(lo) - math.log(hi)) / (N - 1)), rtol=1e-9)


@pytest.mark.parametrize("N", (2, 10, 256))
def test_time_quadratic_on_vp(N):
    """DPM-Solver's time-quadratic steps: sqrt(t) uniform from 1 to sqrt(1e-3); on vp's own range the fitted
    schedule is vp's (beta_d = 19.9, beta_min = 0.1), so t itself is known in closed form."""
    f = presets.get("vp")
    t = time_steps(f, N, "time-quadratic")
    np.testing.assert_allclose(t[:-1].numpy(), (1 + frac(N) * (math.sqrt(EPS_S) - 1)) ** 2, rtol=1e-9)
    check_levels(f, t, vp_sigma_np((1 + frac(N) * (math.sqrt(EPS_S) - 1)) ** 2))
    assert t[-1] == 0
    if N > 2:  # denser than time-uniform near t = eps_s: its last gap in t is smaller
        t_uniform = time_steps(f, N, "time-uniform")
        assert float(t[-3] - t[-2]) < float(t_uniform[-3] - t_uniform[-2])


@pytest.mark.parametrize("preset", ("edm", "ve", "flow"))
def test_time_quadratic_fitted_betas(preset):
    f = presets.get(preset)
    lo, hi = expected_range(f, "time-quadratic")
    check_levels(f, time_steps(f, 12, "time-quadratic"), ref_time_quadratic(12, lo, hi))
    check_levels(f, time_steps(f, 12, "time-quadratic", sigma_min=0.05, sigma_max=30.0), ref_time_quadratic(12, 0.05, 30.0))


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_time_uniform_and_logsnr_are_aliases(preset):
    """time-uniform (DPM-Solver) is EDM's vp discretization; logsnr is log-sigma: logSNR = ln(alpha^2 / sigma_vp^2)
    = -2 ln sigma with alpha = 1/sqrt(1 + sigma^2), sigma_vp = alpha sigma."""
    f = presets.get(preset)
    assert torch.equal(time_steps(f, 9, "time-uniform"), time_steps(f, 9, "vp"))
    assert torch.equal(time_steps(f, 9, "logsnr"), time_steps(f, 9, "log-sigma"))
    assert torch.equal(time_steps(f, 9, "logsnr", sigma_min=0.01, sigma_max=20.0), time_steps(f, 9, "log-sigma", sigma_min=0.01, sigma_max=20.0))
    if preset == "edm":  # continuous sigma: logSNR itself is evenly spaced
        sigma = f.sigma(time_steps(f, 9, "logsnr")[:-1]).numpy()
        alpha = 1 / np.sqrt(1 + sigma**2)
        log_snr = np.log(alpha**2 / (alpha * sigma) ** 2)
        np.testing.assert_allclose(np.diff(log_snr), np.full(8, 2 * math.log(80.0 / 0.002) / 8), rtol=1e-10)


@pytest.mark.parametrize("name", ("flow", "sd3"))
@pytest.mark.parametrize("N", (1, 4, 50))
def test_uniform_t_flow(name, N):
    f = presets.get(name)
    t = time_steps(f, N, "uniform-t").numpy()
    want = 1 - np.arange(N + 1) / N
    assert abs(t[0] - (1 - 1e-9)) < 1e-12  # t = 1 moved to sigma ~ 1e9
    assert float(f.sigma(torch.tensor(t[0]))) == pytest.approx(1e9, rel=1e-6)
    np.testing.assert_allclose(t[1:], want[1:], rtol=0, atol=1e-15)
    assert t[-1] == 0.0


def test_uniform_t_on_edm_is_uniform_in_t():
    f = presets.get("edm")
    t = time_steps(f, 10, "uniform-t").numpy()
    np.testing.assert_allclose(t[:-1], 80 + frac(10) * (0.002 - 80), rtol=1e-12)
    assert t[-1] == 0


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_default_is_the_formulations_own(preset):
    f = presets.get(preset)
    assert torch.equal(time_steps(f, 6), time_steps(f, 6, f.default_discretization))


# --------------------------------------------------------------------------- common properties


@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_shape_order_and_final_zero(name, preset):
    f = presets.get(preset)
    for N in (1, 2, 5, 33):
        t = time_steps(f, N, name)
        assert t.dtype == F64 and t.shape == (N + 1,)
        assert float(t[-1]) == 0.0
        assert bool((t[1:] < t[:-1]).all()), (name, preset, N, t)
        assert bool(torch.isfinite(f.sigma(t)).all())


@pytest.mark.parametrize("name", ["edm", "vp", "ve", "iddpm", "log-sigma", "time-quadratic", "time-uniform", "logsnr"])
@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_levels_inside_the_clipped_default_range(name, preset):
    f = presets.get(preset)
    lo, hi = expected_range(f, name)
    sig = f.sigma(time_steps(f, 20, name)[:-1]).numpy()
    tol = 1e-9
    if preset == "iddpm":  # levels are snapped to the nearest u_j (EDM's round_sigma)
        u = iddpm_u_np()
        lo, hi = (float(u[np.abs(u - v).argmin()]) for v in (lo, hi))
        if name == "iddpm":
            name = "exact"
    assert sig[0] == pytest.approx(hi, rel=tol) if name != "iddpm" else sig[0] <= hi * (1 + tol)
    assert sig[-1] == pytest.approx(lo, rel=tol) if name != "iddpm" else sig[-1] >= lo * (1 - tol)


def test_default_ranges_are_clipped_to_the_support():
    # vp: sigma_min below what vp trained on is raised to sigma(1e-5)
    vp = presets.get("vp")
    t = time_steps(vp, 8, "edm", sigma_min=1e-4)
    assert float(vp.sigma(t[-2])) == pytest.approx(float(vp_sigma_np(1e-5)), rel=1e-9)
    t = time_steps(vp, 8, "edm", sigma_max=1e4)
    assert float(vp.sigma(t[0])) == pytest.approx(float(vp_sigma_np(1.0)), rel=1e-9)
    # ve: edm's own range [0.002, 80] becomes [0.02, 80]
    ve = presets.get("ve")
    t = time_steps(ve, 8, "edm")
    assert float(ve.sigma(t[-2])) == pytest.approx(0.02, rel=1e-12)
    assert float(ve.sigma(t[0])) == pytest.approx(80.0, rel=1e-12)
    # iddpm: sigma_min 0.002 becomes u_{M-1}
    u = iddpm_u_np()
    t = time_steps(presets.get("iddpm"), 8, "edm")
    assert float(t[-2]) == pytest.approx(u[999], rel=1e-9)


def test_explicit_sigma_levels():
    f = presets.get("vp")
    levels = torch.tensor([100.0, 10.0, 1.0, 0.1, 0.01], dtype=F64)
    for given in (levels, torch.cat([levels, torch.zeros(1, dtype=F64)])):
        t = time_steps(f, 99, given)
        assert t.shape == (6,) and t[-1] == 0
        torch.testing.assert_close(f.sigma(t[:-1]), levels, rtol=1e-10, atol=0)
    with pytest.raises(ValueError):
        time_steps(f, 3, torch.tensor([1.0, 2.0], dtype=F64))
    # an infinite first level (flow's t = 1) starts at sigma = 1e9
    flow = presets.get("flow")
    t = time_steps(flow, 3, torch.tensor([math.inf, 3.0, 0.5], dtype=F64))
    assert abs(float(t[0]) - (1 - 1e-9)) < 1e-12
    np.testing.assert_allclose(t[1:].numpy(), [0.75, 1 / 3, 0.0], rtol=1e-14)


# --------------------------------------------------------------------------- errors


def _one_line(err):
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_unknown_discretization():
    with pytest.raises(ValueError) as err:
        time_steps(presets.get("edm"), 10, "karras2")
    msg = _one_line(err)
    assert "karras2" in msg
    for name in ALL_NAMES:
        assert name in msg
    assert set(ALL_NAMES) <= set(samplers.discretization_names())  # others may be registered at run time


@pytest.mark.parametrize("bad", (0, -3))
def test_bad_num_steps(bad):
    with pytest.raises(ValueError) as err:
        time_steps(presets.get("edm"), bad, "edm")
    msg = _one_line(err)
    assert str(bad) in msg and ">= 1" in msg


@pytest.mark.parametrize("lo,hi", ((5.0, 1.0), (2.0, 2.0)))
def test_sigma_min_not_below_sigma_max(lo, hi):
    with pytest.raises(ValueError) as err:
        time_steps(presets.get("edm"), 10, "edm", sigma_min=lo, sigma_max=hi)
    msg = _one_line(err)
    assert "sigma_min" in msg and "sigma_max" in msg
    assert f"{lo:g}" in msg and f"{hi:g}" in msg


def test_sample_with_unknown_solver():
    D = finite_set_denoiser(torch.zeros(1, 2, dtype=F64))
    with pytest.raises(ValueError) as err:
        samplers.sample(D, torch.zeros(1, 2, dtype=F64), formulation="edm", solver="rk45")
    msg = _one_line(err)
    assert "rk45" in msg
    for name in samplers.names():
        assert name in msg
    for name in ("euler", "heun", "ddim", "ancestral"):
        assert name in samplers.names()


# --------------------------------------------------------------------------- the final step


GAUSS_MU = torch.tensor([0.3, -0.2], dtype=F64)
GAUSS = gaussian_denoiser(GAUSS_MU, 0.6)
Z = torch.randn(5, 2, generator=torch.Generator().manual_seed(3), dtype=F64)


def test_final_denoise_step_is_d_at_sigma_min():
    """final_step="denoise": the solver stops at sigma_min = sigma(t_{N-1}) and the sample is D(x / s; sigma_min)."""
    f = presets.get("vp")
    calls, info = [], {}
    x = samplers.sample(
        GAUSS, Z, formulation=f, solver="euler", num_steps=7, final_step="denoise", info=info,
        callback=lambda step, t, sigma, x, denoised: calls.append((step, float(t), x.clone(), denoised.clone())),
    )
    t = info["t_steps"]
    assert [c[0] for c in calls] == list(range(7)) and calls[-1][1] == float(t[-2]) and info["nfe"] == 7
    sigma_min = float(f.sigma(t[-2]))
    x_hat = calls[-2][2] / float(f.scale(t[-2]))  # the state at sigma_min, unscaled
    expected = GAUSS_MU + 0.36 / (0.36 + sigma_min**2) * (x_hat - GAUSS_MU)
    assert torch.allclose(x, expected, rtol=1e-12, atol=1e-14) and torch.equal(calls[-1][3], x)
    # Euler's own last step in vp's t is not that jump.
    plain = samplers.sample(GAUSS, Z, formulation=f, solver="euler", num_steps=7)
    assert (plain - x).abs().max() > 1e-5


@pytest.mark.parametrize("solver,preset", [("euler", "edm"), ("dpm++2m", "vp"), ("dpm++2m", "flow"), ("dpm++3m", "vp"), ("ddim", "vp")])
def test_final_denoise_is_what_edm_and_k_diffusion_do(solver, preset):
    """On EDM's ODE, Euler from sigma_min to 0 is x + (0 - sigma)(x - D)/sigma = D; DPM-Solver++ and DDIM return D
    on the step into sigma = 0 in any formulation: for them both final steps give the same sample."""
    kwargs = dict(formulation=preset, solver=solver, num_steps=8, discretization="edm")
    solver_end = samplers.sample(GAUSS, Z, **kwargs)
    denoise_end = samplers.sample(GAUSS, Z, final_step="denoise", **kwargs)
    assert torch.allclose(solver_end, denoise_end, rtol=0, atol=1e-12)


def test_unknown_final_step():
    with pytest.raises(ValueError) as err:
        samplers.sample(GAUSS, Z, solver="euler", num_steps=3, final_step="noise")
    msg = _one_line(err)
    assert "noise" in msg and "solver" in msg and "denoise" in msg


@pytest.mark.parametrize("constants", [{"M": 300}, {"M": 1000, "C2": 0.02}])
def test_iddpm_steps_of_an_iddpm_preset_with_other_constants_use_its_levels(constants):
    # The iDDPM discretization picks among the sampled model's own levels (EDM Table 1 with its M, C1, C2),
    # not the default M = 1000 ones, which an iDDPM network with other constants was never trained on.
    f = presets.get("iddpm", **constants)
    t = time_steps(f, 10, "iddpm")
    lo, hi = sigma_range(f, "iddpm")
    np.testing.assert_allclose(f.sigma(t[:-1]).numpy(), ref_iddpm(10, lo, hi, **constants), rtol=1e-12)
    default = time_steps(presets.get("iddpm"), 10, "iddpm")
    assert not torch.allclose(f.sigma(t[:-1]), presets.get("iddpm").sigma(default[:-1]))
