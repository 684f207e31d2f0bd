"""presets: names, lookup errors, overrides and the papers' constants.

Constants are checked against values written here from the papers / docs/design.md
(vp sigma(1e-3) = 0.01049, sigma(1) = 152.2; iDDPM levels by EDM Table 1's
recursion in numpy; SD3's time shift).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import presets
import samplers
from edm_space.parameterization import Formulation

F64 = torch.float64
EXPECTED_NAMES = ["edm", "vp", "ve", "iddpm", "ddpm", "ddim", "flow", "sd3"]


def _vp_sigma(t: float) -> float:
    return math.sqrt(math.exp(0.5 * 19.9 * t**2 + 0.1 * t) - 1)


def _sig4(x: float) -> float:
    """x rounded to 4 significant figures."""
    return float(f"{x:.4g}")


def test_names_are_the_design_table():
    assert presets.names() == EXPECTED_NAMES


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_get_returns_a_formulation_of_that_name(name):
    f = presets.get(name)
    assert isinstance(f, Formulation)
    assert f.name == name
    assert presets.get(f) is f


def test_unknown_preset_names_it_and_all_valid_names():
    with pytest.raises(ValueError) as err:
        presets.get("nope")
    msg = str(err.value)
    assert "nope" in msg and "\n" not in msg
    for name in EXPECTED_NAMES:
        assert name in msg


def test_unknown_override_names_the_parameter():
    with pytest.raises(ValueError) as err:
        presets.get("edm", bogus=1)
    msg = str(err.value)
    assert "bogus" in msg and "edm" in msg and "\n" not in msg
    assert "sigma_data" in msg  # the valid parameters are listed


def test_override_changes_the_constant():
    f = presets.get("edm", sigma_data=1.0)
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=F64)
    c_skip, c_out, c_in, _ = f.precond(sigma)
    torch.testing.assert_close(c_skip, 1 / (sigma**2 + 1), rtol=1e-14, atol=0)
    torch.testing.assert_close(c_out, sigma / torch.sqrt(sigma**2 + 1), rtol=1e-14, atol=0)
    torch.testing.assert_close(f.loss_weight(sigma), (sigma**2 + 1) / sigma**2, rtol=1e-14, atol=0)
    # the default preset is unchanged
    assert float(presets.get("edm").precond(torch.tensor([1.0], dtype=F64))[0]) == pytest.approx(0.25 / 1.25)


def test_edm_constants():
    f = presets.get("edm")
    assert (f.sigma_min, f.sigma_max) == (0.002, 80.0)
    assert f.default_solver == "heun" and f.default_discretization == "edm"


def test_vp_constants():
    f = presets.get("vp")
    assert _sig4(float(f.sigma(1e-3))) == 0.01049
    assert _sig4(float(f.sigma(1.0))) == 152.2
    assert f.sigma_min == pytest.approx(_vp_sigma(1e-3), rel=1e-10)
    assert f.sigma_max == pytest.approx(_vp_sigma(1.0), rel=1e-12)
    # training t in [1e-5, 1]: the supported sigma range
    lo, hi = f.support
    assert lo == pytest.approx(math.sqrt(math.expm1(0.5 * 19.9 * 1e-10 + 0.1 * 1e-5)), rel=1e-10)
    assert hi == pytest.approx(_vp_sigma(1.0), rel=1e-12)


def test_ve_constants():
    f = presets.get("ve")
    assert (f.sigma_min, f.sigma_max) == (0.02, 100.0)
    assert tuple(f.support) == (0.02, 100.0)


def test_iddpm_levels(iddpm_u):
    f = presets.get("iddpm")
    u = f.levels
    assert u is not None and u.dtype == F64 and len(u) == 1001
    assert float(u[-1]) == 0.0  # u_M = 0
    assert bool((u[1:] < u[:-1]).all())  # strictly decreasing
    np.testing.assert_allclose(u.numpy(), iddpm_u, rtol=1e-12, atol=0)
    # the sampling range and the trained range (EDM: net.sigma_min = u_{M-1}, net.sigma_max = u_0)
    assert (f.sigma_min, f.sigma_max) == (0.002, 81.0)
    assert f.support[0] == pytest.approx(iddpm_u[999], rel=1e-12)
    assert f.support[1] == pytest.approx(iddpm_u[0], rel=1e-12)
    # u_0 follows from abar(0) = 0, i.e. the ratio clipped to C1: u_0^2 + 1 = (u_1^2 + 1) / C1
    assert float(u[0]) ** 2 + 1 == pytest.approx((float(u[1]) ** 2 + 1) / 0.001, rel=1e-12)


def test_iddpm_round_sigma_snaps_to_levels(iddpm_u):
    f = presets.get("iddpm")
    s = torch.tensor([0.5, 3.0, 79.0], dtype=F64)
    got = f.round_sigma(s).numpy()
    want = iddpm_u[np.abs(iddpm_u[None, :] - s.numpy()[:, None]).argmin(axis=1)]
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)
    # non-discrete presets leave sigma alone
    assert torch.equal(presets.get("edm").round_sigma(s), s)


@pytest.mark.parametrize("name", ("ddpm", "ddim"))
def test_ddpm_constants(name, ddpm_sigma_table):
    f = presets.get(name)
    assert f.sigma_min == pytest.approx(ddpm_sigma_table[1], rel=1e-12)
    assert f.sigma_max == pytest.approx(ddpm_sigma_table[1000], rel=1e-12)
    assert f.default_discretization == "ddpm"


def test_ddim_is_ddpm_with_the_ddim_solver():
    ddpm, ddim = presets.get("ddpm"), presets.get("ddim")
    t = torch.linspace(0, 1000, 777, dtype=F64)
    assert torch.equal(ddpm.sigma(t), ddim.sigma(t)) and torch.equal(ddpm.scale(t), ddim.scale(t))
    sigma = ddpm.sigma(torch.arange(1, 1001, dtype=F64))
    for a, b in zip(ddpm.precond(sigma), ddim.precond(sigma)):
        assert torch.equal(a, b)
    assert ddim.default_solver == "ddim"
    assert ddpm.default_solver in samplers.names() and ddim.default_solver in samplers.names()


def test_sd3_is_flow_by_default():
    flow, sd3 = presets.get("flow"), presets.get("sd3")
    t = torch.linspace(0, 0.99, 50, dtype=F64)
    assert torch.equal(flow.sigma(t), sd3.sigma(t)) and torch.equal(flow.scale(t), sd3.scale(t))
    assert sd3.time_shift == 1.0
    assert samplers.time_steps(sd3, 10).tolist() == samplers.time_steps(flow, 10).tolist()


@pytest.mark.parametrize("shift", (3.0, 0.5))
def test_sd3_time_shift(shift):
    f = presets.get("sd3", shift=shift)
    N = 10
    t = samplers.time_steps(f, N, "uniform-t")
    u = 1 - np.arange(N + 1) / N
    want = shift * u / (1 + (shift - 1) * u)  # t' = a t / (1 + (a - 1) t)
    want[0] = 1 - 1e-9  # t = 1 itself is pure noise; the sampler starts at sigma ~ 1e9
    np.testing.assert_allclose(t.numpy(), want, rtol=0, atol=1e-12)
    # the shift multiplies flow's sigma by a
    sig = f.sigma(t[1:-1]).numpy()
    np.testing.assert_allclose(sig, shift * u[1:-1] / (1 - u[1:-1]), rtol=1e-10)


@pytest.mark.parametrize("shift", (0.0, -1.0))
def test_sd3_bad_shift(shift):
    with pytest.raises(ValueError) as err:
        presets.get("sd3", shift=shift)
    assert "shift" in str(err.value)


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_defaults_are_usable(name):
    f = presets.get(name)
    assert f.default_solver in samplers.names()
    assert f.default_discretization in samplers.discretization_names()
    assert f.default_steps >= 1
    row = f.describe()
    assert row["preset"] == name
