"""ipndm, unipc-2/-3 and deis against diffusers 0.42.1's schedulers, configured alike.

The denoiser, latents and error measure are those of tests/test_references.py (the
exact posterior mean of a 3-component Gaussian mixture in 4-D). diffusers' schedulers
live in a VP state x = alpha x_hat with alpha = 1 / sqrt(1 + sigma^2) and
sigma_vp = alpha sigma; each is given our sigma levels and our start state, and its
network answers from our denoiser at x_hat = x / alpha:

- IPNDMScheduler: `trained_betas` = sigma_vp of our levels, the final 0 included (its
  betas are the VP noise levels: alphas = sqrt(1 - betas^2)). Its model output is taken
  as v = alpha eps - sigma_vp x_0, so that its internal ets = sigma_vp x + alpha v is eps
  and each step is x_hat <- x_hat + (sigma_next - sigma) * (Adams-Bashforth mix of eps):
  constant-step iPNDM on EDM's ODE, i.e. our ipndm on the edm preset (t = sigma). Both
  take the full fourth-order step into sigma = 0.
- UniPCMultistepScheduler (data prediction, prediction_type="sample", solver_order =
  our p, solver_type = our variant, lower_order_final = ours): its `sigmas` replaced by our
  levels after set_timesteps. Into sigma = 0 (final_sigmas_type="zero") with
  lower_order_final=True, our default, for orders 2 and 3 with bh2: the step into 0 returns D
  and, for order 3, the step before it is second order. (With bh1 diffusers returns NaN there:
  B(h) = -h = -inf times a 0 correction.) Ending at sigma_min (ours with final_step="denoise"
  before its final D call), both variants and both lower_order_final settings.
- DPMSolverMultistepScheduler (algorithm_type="dpmsolver++", solver_order=2 or 3, prediction_type="sample",
  solver_type="midpoint", lower_order_final = ours) is our published dpm++2m / dpm++3m: its orders warm up
  1, 2, 3 and the step into sigma = 0 (final_sigmas_type="zero") is first order (returns D). With its default
  lower_order_final=True, on fewer than 15 steps the last step is first order and the one before it at most
  second order: ours by default, with either final_step (a run to sigma_min counts the final D as its last step).
  diffusers' final_sigmas_type="sigma_min" (the state at sigma_min) is ours at sigma_min with
  lower_order_final=False (its True lowers the step into sigma_min instead). With solver_type="heun" its warm-up step is our taylor=True one, but its
  third-order steps stay the published ones, so taylor=True is compared only there.
- DEISMultistepScheduler ("logrho": eps fitted in ln sigma) is our deis with
  basis="log-sigma". It cannot step into sigma = 0 (its first-order update there computes
  0 * inf), so it runs to sigma_min with lower_order_final=False and is compared with
  our state at sigma_min under final_step="denoise".

Where diffusers computes in float64 (its tables replaced by float64 ones) the samples agree
to ~1e-10; with its own float32 tables and a float32 state to float32 accuracy (measured
<= 2e-6 relative). Our solvers in x_hat do not depend on s(t): unipc and deis on the vp
preset must give the same x_hat as on edm.
"""

from __future__ import annotations

import sys

import pytest
import torch

import presets
import samplers
from _reference_imports import diffusers_schedulers
from samplers.discretizations import time_steps
from test_references import BATCH, TIGHT, _latents, denoiser, rel_err

F64, F32 = torch.float64, torch.float32
FLOAT32 = 1e-5  # float32 tables and state (measured <= 2e-6)

# diffusers passes torch tensors through numpy (set_timesteps, DEIS's np.log), which warns on every call.


pytestmark = [pytest.mark.filterwarnings("ignore:__array:DeprecationWarning"), pytest.mark.usefixtures("one_thread_per_module")]


@pytest.fixture(scope="module")
def schedulers():
    """(IPNDMScheduler, UniPCMultistepScheduler, DEISMultistepScheduler, DPMSolverMultistepScheduler) of diffusers."""
    diffusers_schedulers()  # the reference tests' gate on diffusers being installed
    ipndm = pytest.importorskip("diffusers.schedulers.scheduling_ipndm")
    unipc = pytest.importorskip("diffusers.schedulers.scheduling_unipc_multistep")
    deis = pytest.importorskip("diffusers.schedulers.scheduling_deis_multistep")
    dpm = pytest.importorskip("diffusers.schedulers.scheduling_dpmsolver_multistep")
    return ipndm.IPNDMScheduler, unipc.UniPCMultistepScheduler, deis.DEISMultistepScheduler, dpm.DPMSolverMultistepScheduler


def edm_levels(num_steps: int) -> torch.Tensor:
    """The edm discretization's sigma levels (rho = 7 on [0.002, 80]) with the final 0."""
    return time_steps(presets.get("edm"), num_steps)


def vp_alpha(sigma: torch.Tensor) -> torch.Tensor:
    return 1 / (1 + sigma**2).sqrt()


def ours_at_sigma_min(solver: str, preset: str, levels: torch.Tensor, **options) -> torch.Tensor:
    """Our x_hat at sigma_min = levels[-2]: the state after the last solver step under final_step="denoise"."""
    f = presets.get(preset)
    states = []
    samplers.sample(
        denoiser, _latents(), formulation=f, solver=solver, discretization=levels, final_step="denoise",
        callback=lambda step, t, sigma, x, denoised: states.append((x.clone(), t)), **options,
    )
    # The callback names each step by its start: the state after step N - 2 is at t_{N-1}, the final step's start.
    (x, _), (_, t_min) = states[-2], states[-1]
    return x / f.scale(t_min)


def run_data_prediction_scheduler(scheduler, levels: torch.Tensor, dtype) -> torch.Tensor:
    """Drive a data-prediction scheduler through `levels` (its sigmas replaced by them); returns x_hat at the end."""
    scheduler.set_timesteps(len(levels) - 1)
    assert len(scheduler.sigmas) == len(levels)
    scheduler.sigmas = levels.to(dtype)
    x = (_latents() * levels[0] * vp_alpha(levels[0])).to(dtype)
    for i, timestep in enumerate(scheduler.timesteps):
        x_hat = x.to(F64) / vp_alpha(levels[i])
        x = scheduler.step(denoiser(x_hat, levels[i].expand(BATCH)).to(dtype), timestep, x).prev_sample
    assert x.dtype == dtype
    return x.to(F64) / vp_alpha(levels[-1])


# ---------------------------------------------------------------------------
# IPNDMScheduler


def run_ipndm(IPNDMScheduler, levels: torch.Tensor, dtype) -> torch.Tensor:
    betas = levels * vp_alpha(levels)  # sigma_vp, 0 at the end
    scheduler = IPNDMScheduler(num_train_timesteps=1000, trained_betas=betas.tolist())
    num_steps = len(levels) - 1
    scheduler.set_timesteps(num_steps)
    if dtype == F64:  # its own tables are float32: betas from the config, alphas = sqrt(1 - betas^2)
        scheduler.betas, scheduler.alphas = betas.clone(), (1 - betas**2).sqrt()
    x = (_latents() * levels[0] * vp_alpha(levels[0])).to(dtype)
    for i, timestep in enumerate(scheduler.timesteps):
        alpha = vp_alpha(levels[i])
        x_hat = x.to(F64) / alpha
        d = denoiser(x_hat, levels[i].expand(BATCH))
        eps = (x_hat - d) / levels[i]
        v = alpha * eps - alpha * levels[i] * d
        x = scheduler.step(v.to(dtype), timestep, x).prev_sample
    assert x.dtype == dtype
    return x.to(F64)  # alpha = 1 at sigma = 0


@pytest.mark.parametrize("num_steps", [3, 12, 25])
def test_diffusers_ipndm_float64(schedulers, num_steps):
    levels = edm_levels(num_steps)
    ours = samplers.sample(denoiser, _latents(), formulation="edm", solver="ipndm", discretization=levels)
    assert rel_err(ours, run_ipndm(schedulers[0], levels, F64)) < TIGHT


def test_diffusers_ipndm_float32(schedulers):
    levels = edm_levels(12)
    ours = samplers.sample(denoiser, _latents(), formulation="edm", solver="ipndm", discretization=levels)
    assert rel_err(ours, run_ipndm(schedulers[0], levels, F32)) < FLOAT32


# ---------------------------------------------------------------------------
# UniPCMultistepScheduler


def unipc_scheduler(UniPC, order: int, variant: str, lower_order_final: bool):
    return UniPC(
        num_train_timesteps=1000,
        solver_order=order,
        solver_type=variant,
        prediction_type="sample",
        predict_x0=True,
        lower_order_final=lower_order_final,
        final_sigmas_type="zero",
        disable_corrector=[],
    )


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("num_steps", [2, 4, 12])
def test_diffusers_unipc_into_zero(schedulers, order, num_steps):
    """bh2, final_sigmas_type="zero" and diffusers' default lower_order_final=True: our defaults."""
    levels = edm_levels(num_steps)
    ours = samplers.sample(denoiser, _latents(), formulation="edm", solver=f"unipc-{order}", discretization=levels)
    assert rel_err(ours, run_data_prediction_scheduler(unipc_scheduler(schedulers[1], order, "bh2", True), levels, F64)) < TIGHT


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("preset", ["edm", "vp"])
@pytest.mark.parametrize("lower_order_final", [True, False])
def test_diffusers_unipc_to_sigma_min(schedulers, order, variant, preset, lower_order_final):
    levels = edm_levels(12)
    ours = ours_at_sigma_min(f"unipc-{order}", preset, levels, variant=variant, lower_order_final=lower_order_final)
    ref = run_data_prediction_scheduler(unipc_scheduler(schedulers[1], order, variant, lower_order_final), levels[:-1], F64)
    assert rel_err(ours, ref) < TIGHT
    # The option changes the result: the last step (and for order 3 the one before) at lower order.
    other = ours_at_sigma_min(f"unipc-{order}", preset, levels, variant=variant, lower_order_final=not lower_order_final)
    assert rel_err(other, ref) > 1e-8


def test_unipc_3_lower_order_final_into_zero_changes_the_second_to_last_step(schedulers):
    """Into sigma = 0 the last step returns D either way; unipc-3's option decides the order of the step before."""
    levels = edm_levels(6)
    lowered = samplers.sample(denoiser, _latents(), formulation="edm", solver="unipc-3", discretization=levels)
    full = samplers.sample(denoiser, _latents(), formulation="edm", solver="unipc-3", discretization=levels, lower_order_final=False)
    ref = run_data_prediction_scheduler(unipc_scheduler(schedulers[1], 3, "bh2", True), levels, F64)
    assert rel_err(lowered, ref) < TIGHT < rel_err(full, ref)


@pytest.mark.parametrize("order", [2, 3])
def test_diffusers_unipc_float32(schedulers, order):
    levels = edm_levels(12)
    ours = ours_at_sigma_min(f"unipc-{order}", "edm", levels, lower_order_final=False)
    ref = run_data_prediction_scheduler(unipc_scheduler(schedulers[1], order, "bh2", False), levels[:-1], F32)
    assert rel_err(ours, ref) < FLOAT32


# ---------------------------------------------------------------------------
# DEISMultistepScheduler


def deis_scheduler(DEIS, order: int):
    return DEIS(num_train_timesteps=1000, solver_order=order, prediction_type="sample", algorithm_type="deis", solver_type="logrho", lower_order_final=False)


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("preset", ["edm", "vp"])
@pytest.mark.parametrize("num_steps", [5, 12])
def test_diffusers_deis_to_sigma_min(schedulers, order, preset, num_steps):
    levels = edm_levels(num_steps)
    ours = ours_at_sigma_min("deis", preset, levels, max_order=order, basis="log-sigma")
    ref = run_data_prediction_scheduler(deis_scheduler(schedulers[2], order), levels[:-1], F64)
    assert rel_err(ours, ref) < TIGHT


@pytest.mark.parametrize("order", [2, 3])
def test_diffusers_deis_float32(schedulers, order):
    levels = edm_levels(12)
    ours = ours_at_sigma_min("deis", "edm", levels, max_order=order, basis="log-sigma")
    ref = run_data_prediction_scheduler(deis_scheduler(schedulers[2], order), levels[:-1], F32)
    assert rel_err(ours, ref) < FLOAT32


def test_deis_t_basis_is_not_diffusers_log_rho(schedulers):
    """Our default basis="t" fits eps in the formulation's t (on edm: in sigma), diffusers fits it in ln sigma:
    the two are different third-order methods and differ by their truncation errors at 12 steps."""
    levels = edm_levels(12)
    ours = ours_at_sigma_min("deis", "edm", levels)
    ref = run_data_prediction_scheduler(deis_scheduler(schedulers[2], 3), levels[:-1], F64)
    assert rel_err(ours, ref) > 1e-4


# ---------------------------------------------------------------------------
# DPMSolverMultistepScheduler


def dpm_scheduler(DPM, solver_type: str = "midpoint", order: int = 3, lower_order_final: bool = False, final: str = "zero"):
    return DPM(
        num_train_timesteps=1000, solver_order=order, algorithm_type="dpmsolver++", prediction_type="sample",
        solver_type=solver_type, lower_order_final=lower_order_final, final_sigmas_type=final,
    )


class _Float64Torch:
    """torch with float32 read as float64: DPMSolverMultistepScheduler.step casts its state with
    sample.to(torch.float32) on every step; seen through this, its float64 state stays float64."""

    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


@pytest.fixture
def dpm_float64(schedulers, monkeypatch):
    monkeypatch.setattr(sys.modules[schedulers[3].__module__], "torch", _Float64Torch())
    return schedulers[3]


@pytest.mark.parametrize("preset", ["edm", "vp"])
@pytest.mark.parametrize("num_steps", [2, 3, 5, 12, 20])
def test_diffusers_dpmpp_3m_float64(dpm_float64, preset, num_steps):
    levels = edm_levels(num_steps)
    ours = samplers.sample(denoiser, _latents(), formulation=preset, solver="dpm++3m", discretization=levels, lower_order_final=False)
    ref = run_data_prediction_scheduler(dpm_scheduler(dpm_float64), levels, F64)
    assert rel_err(ours, ref) < TIGHT
    # The exact-Taylor form is another method (measured 2e-3 to 0.25 away from 3 steps on).
    taylor = samplers.sample(denoiser, _latents(), formulation=preset, solver="dpm++3m", discretization=levels, taylor=True,
                             lower_order_final=False)
    assert num_steps < 3 or rel_err(taylor, ref) > 1e-3


@pytest.mark.parametrize("preset", ["edm", "vp"])
@pytest.mark.parametrize("num_steps", [3, 4, 5, 12, 14, 15, 20])
def test_diffusers_dpmpp_3m_lower_order_final_default(dpm_float64, preset, num_steps):
    """diffusers' default lower_order_final=True (second order on the step before the last below 15 steps) is ours."""
    levels = edm_levels(num_steps)
    ours = samplers.sample(denoiser, _latents(), formulation=preset, solver="dpm++3m", discretization=levels)
    ref = run_data_prediction_scheduler(dpm_scheduler(dpm_float64, lower_order_final=True), levels, F64)
    assert rel_err(ours, ref) < TIGHT
    # From 4 steps (the first with a third-order step before the last) to 14 the option changes the result.
    full = samplers.sample(denoiser, _latents(), formulation=preset, solver="dpm++3m", discretization=levels, lower_order_final=False)
    assert (rel_err(ours, full) > 1e-6) == (4 <= num_steps < 15)


@pytest.mark.parametrize("num_steps", [4, 12, 17])
def test_diffusers_dpmpp_3m_to_sigma_min(dpm_float64, num_steps):
    """final_sigmas_type="sigma_min" without lower_order_final is ours at sigma_min with lower_order_final=False
    (both orders up to the end); our default lowers the step into sigma_min to second order below 15 steps."""
    levels = edm_levels(num_steps)
    ref = run_data_prediction_scheduler(dpm_scheduler(dpm_float64, final="sigma_min"), levels[:-1], F64)
    assert rel_err(ours_at_sigma_min("dpm++3m", "edm", levels, lower_order_final=False), ref) < TIGHT
    assert (rel_err(ours_at_sigma_min("dpm++3m", "edm", levels), ref) > 1e-6) == (num_steps < 15)


@pytest.mark.parametrize("num_steps", [4, 12, 16])
def test_diffusers_dpmpp_2m_to_sigma_min(dpm_float64, num_steps):
    """2M to sigma_min is diffusers' final_sigmas_type="sigma_min" with lower_order_final=False at any step count:
    lowering its step before the last to second order changes nothing."""
    levels = edm_levels(num_steps)
    ref = run_data_prediction_scheduler(dpm_scheduler(dpm_float64, order=2, final="sigma_min"), levels[:-1], F64)
    assert rel_err(ours_at_sigma_min("dpm++2m", "edm", levels), ref) < TIGHT


@pytest.mark.parametrize("num_steps", [3, 12])
def test_diffusers_dpmpp_3m_heun_warm_up(dpm_float64, num_steps):
    """solver_type="heun" takes taylor=True's warm-up step (phi_2 d1), then the published third-order steps:
    with three steps (DDIM, the warm-up, the step into 0 that returns D) it is our taylor=True; with more it is
    neither of ours."""
    levels = edm_levels(num_steps)
    ref = run_data_prediction_scheduler(dpm_scheduler(dpm_float64, "heun"), levels, F64)
    taylor = samplers.sample(denoiser, _latents(), formulation="edm", solver="dpm++3m", discretization=levels, taylor=True,
                             lower_order_final=False)
    published = samplers.sample(denoiser, _latents(), formulation="edm", solver="dpm++3m", discretization=levels,
                                lower_order_final=False)
    assert (rel_err(taylor, ref) < TIGHT) == (num_steps == 3)
    assert rel_err(published, ref) > 1e-6


def test_diffusers_dpmpp_3m_float32_state(schedulers):
    """Unpatched, diffusers keeps a float32 state: equal to float32 accuracy (measured <= 2e-7 up to 40 steps)."""
    levels = edm_levels(12)
    ours = samplers.sample(denoiser, _latents(), formulation="edm", solver="dpm++3m", discretization=levels)
    ref = run_data_prediction_scheduler(dpm_scheduler(schedulers[3], lower_order_final=True), levels, F64)
    assert rel_err(ours, ref) < FLOAT32
