"""The preset constants that express diffusers' models: predictions, beta schedules, float32 tables, linear interpolation."""

from __future__ import annotations

import math

import pytest
import torch

import presets
from edm_space.errors import ConfigError

F64 = torch.float64


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_each_prediction_has_unit_loss_weight_and_its_papers_target(prediction):
    f = presets.get("ddpm", prediction=prediction)
    sigma = torch.tensor([0.05, 0.7, 3.0, 40.0], dtype=F64)
    _, c_out, _, _ = f.precond(sigma)
    torch.testing.assert_close(f.loss_weight(sigma) * c_out**2, torch.ones_like(sigma), rtol=1e-12, atol=0)
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, generator=generator, dtype=F64), torch.randn(4, 3, generator=generator, dtype=F64)
    target = f.training_target(x0, noise, sigma)
    alpha, sigma_vp = 1 / (1 + sigma**2).sqrt(), sigma / (1 + sigma**2).sqrt()  # x_t = alpha x0 + sigma_vp eps
    expected = {"epsilon": noise, "v_prediction": alpha[:, None] * noise - sigma_vp[:, None] * x0,  # Salimans & Ho 2022, v
                "sample": x0}[prediction]
    torch.testing.assert_close(target, expected, rtol=1e-10, atol=1e-12)


def test_squaredcos_betas_follow_the_cosine_abar_closed_form():
    f = presets.get("ddpm", beta_schedule="squaredcos_cap_v2")
    t = torch.arange(0, 900, 37, dtype=F64)
    abar = torch.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2  # Nichol & Dhariwal eq. 17
    torch.testing.assert_close(f.noise.sigmas[t.long()], (1 / abar - 1).sqrt(), rtol=1e-10, atol=1e-12)


def test_scaled_linear_betas_and_their_float32_table():
    f = presets.get("ddpm", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    g = presets.get("ddpm", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, precision="float32")
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=F64) ** 2
    abar = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(f.noise.sigmas[1:], (1 / abar - 1).sqrt(), rtol=1e-12, atol=0)
    relative = ((g.noise.sigmas[1:] - f.noise.sigmas[1:]) / f.noise.sigmas[1:]).abs()
    assert 1e-6 < float(relative.max()) < 1e-4  # float32 round-off (1.3e-5 here), not another schedule


def test_linear_interpolation_is_linear_in_sigma_and_inverts():
    f = presets.get("ddim", interpolation="linear")
    table = f.noise.sigmas
    t = torch.tensor([0.25, 1.0, 17.5, 500.3, 999.9], dtype=F64)
    k = t.floor().long()
    torch.testing.assert_close(f.sigma(t), table[k] + (t - k) * (table[k + 1] - table[k]), rtol=1e-13, atol=0)
    torch.testing.assert_close(f.sigma_inv(f.sigma(t)), t, rtol=1e-12, atol=1e-12)
    inside = torch.tensor([17.5, 500.3], dtype=F64)  # between kinks: the derivative is the slope of the segment
    h = 1e-6
    torch.testing.assert_close(f.sigma_deriv(inside), (f.sigma(inside + h) - f.sigma(inside - h)) / (2 * h), rtol=1e-6, atol=0)


def test_bad_names_are_refused_in_one_line():
    for key, value in (("beta_schedule", "sigmoid"), ("prediction", "flow"), ("precision", "float16"), ("interpolation", "cubic")):
        with pytest.raises(ConfigError, match=key):
            presets.get("ddpm", **{key: value})
    with pytest.raises(ConfigError, match="time_scale"):
        presets.get("sd3", time_scale=-1.0)
