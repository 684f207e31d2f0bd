"""edm_space.compat.k_diffusion against k-diffusion itself, both ways, on the same exact denoiser (edm_space.ideal)."""

from __future__ import annotations

import pytest
import torch

import presets
import samplers
from _reference_imports import k_diffusion_sampling
from edm_space.compat import k_diffusion as kd
from edm_space.data import load
from edm_space.ideal import IdealDenoiser

# Solvers of this project -> the k-diffusion sampler that computes the same thing (ancestral: eta = 1 on both sides).
TWINS = {"euler": "sample_euler", "heun": "sample_heun", "dpm++2m": "sample_dpmpp_2m", "ancestral": "sample_euler_ancestral"}


@pytest.fixture(scope="module")
def setting():
    ideal = IdealDenoiser(load("moons", n=300, seed=0).to(torch.float64))
    sigmas = torch.cat([samplers.discretizations.edm_sigmas(8, 0.002, 80.0), torch.zeros(1, dtype=torch.float64)])
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigmas[0]
    return ideal, sigmas, x


def noise_stream(seed=1):
    """The same sequence of draws for both implementations: k-diffusion's noise_sampler and this project's randn_like."""
    generator = torch.Generator().manual_seed(seed)
    return lambda x, *_: torch.randn(x.shape, generator=generator, dtype=x.dtype)


@pytest.mark.parametrize("solver", list(TWINS))
def test_our_solvers_with_k_diffusion_signature_equal_k_diffusion(solver, setting):
    k_sampling = k_diffusion_sampling()
    ideal, sigmas, x = setting
    model = lambda x, sigma, **extra: ideal(x, sigma.to(torch.float64))  # noqa: E731  (a k-diffusion-style model)
    seen = []
    extra = {"noise_sampler": lambda sigma, sigma_next, stream=noise_stream(): stream(x)} if solver == "ancestral" else {}
    theirs = getattr(k_sampling, TWINS[solver])(model, x.clone(), sigmas, disable=True, **extra)
    ours = getattr(kd, kd.sampler_name(solver))(model, x.clone(), sigmas, callback=seen.append, disable=True,
                                                **({"randn_like": noise_stream()} if solver == "ancestral" else {}))
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    assert [info["i"] for info in seen] == list(range(len(sigmas) - 1))


@pytest.mark.parametrize("solver", list(TWINS))
def test_k_diffusion_samplers_drive_our_denoisers(solver, setting):
    k_sampling = k_diffusion_sampling()
    ideal, sigmas, x = setting
    extra = {"noise_sampler": lambda sigma, sigma_next, stream=noise_stream(): stream(x)} if solver == "ancestral" else {}
    theirs = getattr(k_sampling, TWINS[solver])(kd.KDiffusionModel(ideal), x.clone(), sigmas, disable=True, **extra)
    ours = samplers.sample(ideal, x / sigmas[0], formulation=presets.get("edm"), solver=solver, discretization=sigmas,
                           randn_like=noise_stream())
    torch.testing.assert_close(theirs, ours, rtol=1e-9, atol=1e-9)


def test_every_solver_takes_k_diffusion_arguments_and_extra_args_reach_the_model(setting):
    ideal, sigmas, x = setting
    calls = []

    def model(x, sigma, labels=None):
        calls.append(labels)
        return ideal(x, sigma.to(torch.float64))

    for name in kd.sampler_names():
        out = getattr(kd, name)(model, x.clone(), sigmas, extra_args={"labels": "y"}, disable=True)
        assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()
    assert calls and set(calls) == {"y"}
    with pytest.raises(AttributeError):
        kd.sample_no_such_solver  # noqa: B018
