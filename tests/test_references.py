"""Our samplers against the reference implementations, configured alike.

Each test runs one of our solvers and the corresponding sampler of a published
package on the same denoiser (the exact posterior mean of a fixed 3-component
Gaussian mixture in 4-D), the same latents, the same time steps and the same
random draws, and compares the samples:

- k-diffusion 0.1.1.post1 (Crowson): sample_euler / sample_heun (with and without
  EDM churn), sample_euler_ancestral, sample_dpmpp_2m, sample_dpmpp_2s_ancestral.
  It works in sigma with s = 1, so it is compared with our edm preset, and the
  solvers that live in x_hat = x / s (ddim, ancestral, dpm++) also with the vp
  and flow presets on the same sigma levels.
- diffusers 0.42.1: DDIMScheduler (eta = 0, 0.5, 1) against our ddim preset and
  DDPMScheduler against our ancestral solver on the ddpm preset.
- flow_matching 1.0.10 (Meta): ODESolver's fixed-step Euler on the conditional-OT
  path against our flow preset with Euler on uniform t.

Where the reference computes in float64 we compare to ~1e-10 relative; where it
computes in float32 (diffusers' betas and alphas_cumprod) we compare once with
its own float32 tables at float32 accuracy, and once with those tables replaced
by float64 ones at ~1e-10. The README's test command installs the packages, pinned,
with --no-deps (tests/requirements-reference.txt); a test whose package is missing
skips with that hint on a developer's machine and fails under CI=true (tests/conftest.py).
"""

from __future__ import annotations

import math

import pytest
import torch

import presets
import samplers
from _reference_imports import diffusers_schedulers, k_diffusion_sampling
from edm_space.ideal import GaussianMixtureDenoiser
from samplers.discretizations import SIGMA_INFINITY, time_steps

F64 = torch.float64
F32 = torch.float32
DIM, BATCH = 4, 16
TIGHT = 1e-10  # both sides compute in float64


# ---------------------------------------------------------------------------
# Shared fixtures: the denoiser, latents, noise streams.


def _mixture() -> GaussianMixtureDenoiser:
    g = torch.Generator().manual_seed(1234)
    means = 1.5 * torch.randn(3, DIM, generator=g, dtype=F64)
    a = torch.randn(3, DIM, DIM, generator=g, dtype=F64)
    covariances = 0.05 * a @ a.transpose(1, 2) + 0.02 * torch.eye(DIM, dtype=F64)
    return GaussianMixtureDenoiser(means, covariances, torch.tensor([0.5, 0.3, 0.2], dtype=F64))


MIXTURE = _mixture()


# The tensors here are [16, 4]; intra-op threads only add overhead (up to ms per op), so use one.
pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def denoiser(x_hat: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """D(x_hat; sigma) with k-diffusion's calling convention too: sigma a [batch] tensor."""
    return MIXTURE(x_hat, sigma)


def _latents(seed: int = 0) -> torch.Tensor:
    return torch.randn(BATCH, DIM, generator=torch.Generator().manual_seed(seed), dtype=F64)


class NoiseStream:
    """A fixed sequence of N(0, I) tensors handed out in order; counts what was taken.

    Two streams made with the same seed give both samplers the same draws in the
    same order, whatever function each one draws through.
    """

    def __init__(self, seed: int, count: int = 1100):
        self.draws = torch.randn(count, BATCH, DIM, generator=torch.Generator().manual_seed(seed), dtype=F64)
        self.used = 0

    def next(self, dtype=F64) -> torch.Tensor:
        z = self.draws[self.used].to(dtype)
        self.used += 1
        return z

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:  # our samplers' randn_like, torch.randn_like's signature
        assert tuple(x.shape) == (BATCH, DIM)
        return self.next(x.dtype)

    def noise_sampler(self, sigma, sigma_next) -> torch.Tensor:  # k-diffusion's noise_sampler(sigma, sigma_next)
        return self.next()


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref|."""
    ours, ref = ours.to(F64), ref.to(F64)
    return float((ours - ref).abs().max() / ref.abs().max())


def _ours(formulation, solver, sigmas_or_name, num_steps=None, **options):
    """Our sampler on `formulation`; sigmas_or_name is a tensor of sigma levels or a discretization name."""
    f = presets.get(formulation)
    info = {}
    x = samplers.sample(
        denoiser,
        _latents(),
        formulation=f,
        solver=solver,
        num_steps=num_steps if num_steps is not None else len(sigmas_or_name) - 1,
        discretization=sigmas_or_name,
        info=info,
        **options,
    )
    return x, info


# ---------------------------------------------------------------------------
# k-diffusion


EDM_STEPS = 12


@pytest.fixture(scope="module")
def K():
    return k_diffusion_sampling()


def edm_sigmas(num_steps: int = EDM_STEPS) -> torch.Tensor:
    """The edm preset's own sigma levels (rho = 7 on [0.002, 80]) with the final 0; sigma = t there."""
    return time_steps(presets.get("edm"), num_steps)


def test_k_diffusion_karras_and_vp_schedules_are_our_discretizations(K):
    # get_sigmas_karras / get_sigmas_vp build their ramp with a float32 linspace.
    ours = edm_sigmas(18)
    ref = K.get_sigmas_karras(18, 0.002, 80.0, rho=7.0)
    assert ref.dtype == F32 and ref[-1] == 0
    assert rel_err(ours[:-1] / ref[:-1].double(), torch.ones(18, dtype=F64)) < 2e-6
    f = presets.get("vp")
    ours_vp = f.sigma(time_steps(f, 18))
    ref_vp = K.get_sigmas_vp(18, beta_d=19.9, beta_min=0.1, eps_s=1e-3)
    ratio = ours_vp[:-1] / ref_vp[:-1].double()
    assert rel_err(ratio[:-1], torch.ones(17, dtype=F64)) < 2e-5
    # Its last level, sigma(1e-3) = sqrt(exp(1.1e-4) - 1), loses ~2e-4 (0.010484 for 0.010486) to float32
    # cancellation in exp - 1; ours is float64 with expm1.
    assert float(ours_vp[-2]) == pytest.approx(math.sqrt(math.expm1(0.5 * 19.9e-6 + 0.1e-3)), rel=1e-12)
    assert abs(float(ratio[-1]) - 1) < 1e-3


@pytest.mark.parametrize(
    "ours_solver, reference",
    [
        ("euler", "sample_euler"),
        ("heun", "sample_heun"),
        ("ddim", "sample_euler"),  # DDIM (eta = 0) is Euler in sigma with s = 1
        ("dpm++2m", "sample_dpmpp_2m"),
    ],
)
def test_k_diffusion_deterministic_samplers_on_edm(K, ours_solver, reference):
    sigmas = edm_sigmas()
    ours, info = _ours("edm", ours_solver, sigmas)
    ref = getattr(K, reference)(denoiser, _latents() * sigmas[0], sigmas, disable=True)
    assert torch.equal(info["sigma_steps"], sigmas)
    assert rel_err(ours, ref) < TIGHT


def test_k_diffusion_dpmpp_2s_ancestral_eta0_is_our_dpmpp_2s(K):
    sigmas = edm_sigmas()
    ours, info = _ours("edm", "dpm++2s", sigmas)
    # With eta = 0 its sigma_up is 0: it still calls noise_sampler on every step but the last, times 0.
    stream = NoiseStream(7)
    ref = K.sample_dpmpp_2s_ancestral(denoiser, _latents() * sigmas[0], sigmas, disable=True, eta=0.0, noise_sampler=stream.noise_sampler)
    assert stream.used == EDM_STEPS - 1
    assert info["nfe"] == 2 * EDM_STEPS - 1
    assert rel_err(ours, ref) < TIGHT


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_k_diffusion_euler_ancestral_is_our_ancestral(K, eta):
    sigmas = edm_sigmas()
    mine, theirs = NoiseStream(11), NoiseStream(11)
    ours, _ = _ours("edm", "ancestral", sigmas, eta=eta, s_noise=1.003, randn_like=mine.randn_like)
    ref = K.sample_euler_ancestral(
        denoiser, _latents() * sigmas[0], sigmas, disable=True, eta=eta, s_noise=1.003, noise_sampler=theirs.noise_sampler
    )
    # Both draw after the denoiser call and not on the last step.
    assert mine.used == theirs.used == EDM_STEPS - 1
    assert rel_err(ours, ref) < TIGHT


@pytest.mark.parametrize(
    "solver, reference, window",
    [
        ("euler", "sample_euler", (0.05, 10.0)),  # the window leaves gamma = 0 on the first and last steps
        ("euler", "sample_euler", (0.0, math.inf)),  # churn on every step, the last one (into sigma = 0) too
        ("heun", "sample_heun", (0.05, 10.0)),
    ],
)
def test_k_diffusion_churn_matches(K, monkeypatch, solver, reference, window):
    """EDM Algorithm 2 in both: gamma = min(S_churn / N, sqrt2 - 1) where S_tmin <= sigma_i <= S_tmax (N =
    len(sigmas) - 1), sigma_hat = (1 + gamma) sigma_i, noise sqrt(sigma_hat^2 - sigma_i^2) * S_noise * z, and one
    z per step drawn before the denoiser call even where gamma = 0. k-diffusion draws through torch.randn_like."""
    sigmas = edm_sigmas()
    s_tmin, s_tmax = window
    churn = dict(s_churn=30.0, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=1.007)
    mine, theirs = NoiseStream(5), NoiseStream(5)
    ours, _ = _ours("edm", solver, sigmas, churn=30.0, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=1.007, randn_like=mine.randn_like)
    x0 = _latents() * sigmas[0]
    with monkeypatch.context() as m:
        m.setattr(torch, "randn_like", theirs.randn_like)
        ref = getattr(K, reference)(denoiser, x0, sigmas, disable=True, **churn)
    assert mine.used == theirs.used == EDM_STEPS
    assert rel_err(ours, ref) < TIGHT
    # And the churn did something: without it the sample differs.
    plain, _ = _ours("edm", solver, sigmas)
    assert rel_err(plain, ref) > 1e-3


def test_k_diffusion_draws_even_without_churn_we_do_not(K, monkeypatch):
    """A convention difference that changes no sample: k-diffusion's sample_euler / sample_heun call
    torch.randn_like on every step even when s_churn = 0 (and throw the draw away); ours draws nothing
    with churn = 0 (docs/design.md, "Random draws"). Only the state of a shared generator afterwards differs."""
    sigmas = edm_sigmas()
    mine, theirs = NoiseStream(3), NoiseStream(3)
    ours, _ = _ours("edm", "euler", sigmas, randn_like=mine.randn_like)
    with monkeypatch.context() as m:
        m.setattr(torch, "randn_like", theirs.randn_like)
        ref = K.sample_euler(denoiser, _latents() * sigmas[0], sigmas, disable=True)
    assert (mine.used, theirs.used) == (0, EDM_STEPS)
    assert rel_err(ours, ref) < TIGHT


# The x_hat-space solvers depend only on the sigma levels, not on s(t): on the vp
# and flow presets (s != 1) they must still equal k-diffusion on the same levels.
# Euler on flow is in this list too: flow's ODE dx/dt = (x - D)/t, stepped with
# Euler in flow's own x and t, equals DDIM in x_hat exactly (1 - sigma'/sigma =
# (t - t') / (t (1 - t')) for sigma = t / (1 - t)). Euler on vp is not (it steps
# in vp's t and x), so it is not compared.
CROSS_CASES = [
    ("vp", "ddim", "sample_euler", {}),
    ("vp", "ancestral", "sample_euler_ancestral", {"eta": 1.0}),
    ("vp", "ancestral", "sample_euler_ancestral", {"eta": 0.5}),
    ("vp", "dpm++2m", "sample_dpmpp_2m", {}),
    ("vp", "dpm++2s", "sample_dpmpp_2s_ancestral", {"eta": 0.0}),
    ("flow", "euler", "sample_euler", {}),
    ("flow", "ddim", "sample_euler", {}),
    ("flow", "ancestral", "sample_euler_ancestral", {"eta": 1.0}),
    ("flow", "dpm++2m", "sample_dpmpp_2m", {}),
    ("flow", "dpm++2s", "sample_dpmpp_2s_ancestral", {"eta": 0.0}),
]


def _cross_levels(name: str):
    """Our steps on `name` (vp: its own discretization; flow: the edm sigma levels) and the sigma levels they use."""
    f = presets.get(name)
    if name == "vp":
        t = time_steps(f, EDM_STEPS)
        return "vp", f.sigma(t)
    return edm_sigmas(), edm_sigmas()


@pytest.mark.parametrize("name, solver, reference, options", CROSS_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_k_diffusion_x_hat_solvers_on_other_formulations(K, name, solver, reference, options):
    discretization, sigmas = _cross_levels(name)
    mine, theirs = NoiseStream(13), NoiseStream(13)
    ours_options = {"eta": options["eta"]} if solver == "ancestral" else {}
    ours, info = _ours(name, solver, discretization, num_steps=EDM_STEPS, randn_like=mine.randn_like, **ours_options)
    assert torch.allclose(info["sigma_steps"], sigmas, rtol=1e-14, atol=0)
    kwargs = dict(options)
    if "eta" in options:
        kwargs["noise_sampler"] = theirs.noise_sampler
    sigmas = info["sigma_steps"]  # k-diffusion gets exactly the levels ours stepped through
    ref = getattr(K, reference)(denoiser, _latents() * sigmas[0], sigmas, disable=True, **kwargs)
    if solver == "ancestral":
        assert mine.used == theirs.used == EDM_STEPS - 1
    assert rel_err(ours, ref) < TIGHT


@pytest.mark.parametrize(
    "solver, reference, options, tolerance",
    [
        ("dpm++2m", "sample_dpmpp_2m", {}, TIGHT),
        ("dpm++2s", "sample_dpmpp_2s_ancestral", {"eta": 0.0}, TIGHT),
        ("euler", "sample_euler", {}, 1e-7),
        ("ddim", "sample_euler", {}, 1e-7),
    ],
)
def test_k_diffusion_on_flow_from_pure_noise(K, solver, reference, options, tolerance):
    """Flow's own uniform-t steps start at t = 1 - 1e-9 (sigma = 1e9, docs/design.md), and so does k-diffusion here.

    dpm++ scales the state by sigma_next / sigma, with no cancellation, and agrees to round-off. Euler / DDIM
    compute x_hat + (x_hat - D) (sigma_next - sigma) / sigma with |x_hat| ~ 1e9 on the first step: the
    result, of size sigma_next ~ 10, keeps an absolute round-off of ~1e9 * 2^-52 ~ 2e-7 from x_hat, on
    either side, so the two agree to ~1e-8 (measured 2e-8 at N = 10) and not to 1e-15.
    """
    ours, info = _ours("flow", solver, "uniform-t", num_steps=10)
    sigmas = info["sigma_steps"]
    assert math.isclose(float(sigmas[0]), SIGMA_INFINITY, rel_tol=1e-6)
    ref = getattr(K, reference)(denoiser, _latents() * sigmas[0], sigmas, disable=True, **options)
    assert rel_err(ours, ref) < tolerance


# ---------------------------------------------------------------------------
# diffusers: DDIMScheduler and DDPMScheduler on the DDPM chain (linear betas 1e-4..0.02, T = 1000).


T = 1000


@pytest.fixture(scope="module")
def D():
    return diffusers_schedulers()


def _abar64() -> torch.Tensor:
    """diffusers' alphas_cumprod recipe (betas = linspace(1e-4, 0.02, T), cumprod(1 - betas)) in float64;
    index j is Ho's t = j + 1."""
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=F64), dim=0)


def _eps_model(dtype):
    """The diffusers network: eps(x_t, j) at the 0-based index j = Ho's t - 1, from our denoiser at
    x_hat = x_t / sqrt(abar(t)), sigma = sqrt(1/abar(t) - 1): eps = (x_hat - D) / sigma."""
    abar = _abar64()

    def eps(x: torch.Tensor, j) -> torch.Tensor:
        a = abar[int(j)]
        sigma = (1 / a - 1).sqrt()
        x_hat = x.to(F64) / a.sqrt()
        return ((x_hat - denoiser(x_hat, sigma.expand(BATCH))) / sigma).to(dtype)

    return eps


def _run_scheduler(scheduler, num_steps, x, dtype, **step_kwargs):
    model = _eps_model(dtype)
    scheduler.set_timesteps(num_steps)
    x = x.to(dtype)
    for j in scheduler.timesteps:
        x = scheduler.step(model(x, j), j, x, **step_kwargs).prev_sample
    return x


def _use_float64_tables(scheduler):
    scheduler.alphas_cumprod = _abar64()
    scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=F64)  # DDIM, set_alpha_to_one = True
    scheduler.one = torch.tensor(1.0, dtype=F64)  # DDPM's abar before the first step
    return scheduler


def _start(formulation: str, num_steps: int) -> torch.Tensor:
    """The state our sampler starts from, x = latents * s(t_0) sigma(t_0) = latents * sqrt(1 - abar(t_0)).

    DDPM codebases start at x_T = z instead; the two differ by the factor sqrt(1 - abar(t_0)) (1 - 3e-5 for
    t_0 = 1000), which is a convention, not a solver difference, so the scheduler is handed our start."""
    f = presets.get(formulation)
    t0 = time_steps(f, num_steps)[0]
    return _latents() * f.scale(t0) * f.sigma(t0)


def _ddim_scheduler(D):
    DDIMScheduler = D[0]
    return DDIMScheduler(
        num_train_timesteps=T,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )


def _ddpm_scheduler(D):
    DDPMScheduler = D[1]
    return DDPMScheduler(
        num_train_timesteps=T,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        variance_type="fixed_small",
        clip_sample=False,
        timestep_spacing="leading",
        steps_offset=0,
        prediction_type="epsilon",
    )


def test_diffusers_timesteps_are_our_ddpm_discretization(D):
    f = presets.get("ddim")
    for n in (1, 7, 50, 1000):
        scheduler = _ddim_scheduler(D)
        scheduler.set_timesteps(n)
        ours = f.sigma(time_steps(f, n))
        theirs = (1 / _abar64()[scheduler.timesteps] - 1).sqrt()  # Ho's t = j + 1
        assert torch.allclose(ours[:-1], theirs, rtol=1e-12, atol=0) and ours[-1] == 0


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_diffusers_ddim_float64(D, eta):
    N = 50
    mine = torch.Generator().manual_seed(21)
    theirs = torch.Generator().manual_seed(21)
    randn = lambda x: torch.randn(x.shape, generator=mine, dtype=x.dtype)  # noqa: E731
    ours, _ = _ours("ddim", "ddim", None, num_steps=N, eta=eta, randn_like=randn)
    # With eta > 0 diffusers also draws on the last step (and multiplies that draw by std = 0); ours does
    # not draw there. The draw is the last one, so both use the same first N - 1 draws.
    kwargs = {"eta": eta, "generator": theirs} if eta > 0 else {"eta": 0.0}
    ref = _run_scheduler(_use_float64_tables(_ddim_scheduler(D)), N, _start("ddim", N), F64, **kwargs)
    assert ref.dtype == F64
    if eta > 0:  # diffusers took exactly one draw more than we did
        torch.randn(BATCH, DIM, generator=mine, dtype=F64)
        assert torch.equal(torch.randn(3, generator=mine), torch.randn(3, generator=theirs))
    assert rel_err(ours, ref) < TIGHT


def test_diffusers_ddim_float32(D):
    """Unpatched: diffusers' float32 alphas_cumprod (relative error up to 4e-7) and a float32 state (measured 3e-7)."""
    N = 50
    ours, _ = _ours("ddim", "ddim", None, num_steps=N)
    ref = _run_scheduler(_ddim_scheduler(D), N, _start("ddim", N), F32, eta=0.0)
    assert ref.dtype == F32
    assert rel_err(ours, ref) < 1e-5


@pytest.mark.parametrize("num_steps", [1000, 50])
def test_diffusers_ddpm_float64(D, num_steps):
    """DDPM's posterior step with variance beta-tilde (fixed_small) is our ancestral solver with eta = 1;
    with 50 steps the skipped chain's posterior uses abar(t) / abar(t_prev) as its alpha, as DDIM(eta = 1).
    Both draw after the network call and not on the last step, so a shared generator gives the same draws."""
    mine = torch.Generator().manual_seed(33)
    theirs = torch.Generator().manual_seed(33)
    randn = lambda x: torch.randn(x.shape, generator=mine, dtype=x.dtype)  # noqa: E731
    ours, info = _ours("ddpm", "ancestral", None, num_steps=num_steps, randn_like=randn)
    assert info["nfe"] == num_steps
    ref = _run_scheduler(_use_float64_tables(_ddpm_scheduler(D)), num_steps, _start("ddpm", num_steps), F64, generator=theirs)
    # Same number of draws taken from each generator.
    assert torch.equal(torch.randn(3, generator=mine), torch.randn(3, generator=theirs))
    assert rel_err(ours, ref) < TIGHT


def test_diffusers_ddpm_float32(D):
    N = 50
    mine = torch.Generator().manual_seed(34)
    theirs = torch.Generator().manual_seed(34)
    randn = lambda x: torch.randn(x.shape, generator=mine, dtype=F32).to(x.dtype)  # noqa: E731  # the same float32 draws
    ours, _ = _ours("ddpm", "ancestral", None, num_steps=N, randn_like=randn)
    ref = _run_scheduler(_ddpm_scheduler(D), N, _start("ddpm", N), F32, generator=theirs)
    assert ref.dtype == F32
    assert rel_err(ours, ref) < 5e-5  # float32 state and tables (measured 4e-6)


def test_diffusers_add_noise_is_our_forward_process(D):
    """x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps at index j is s(t) (x_0 + sigma(t) eps) at Ho's t = j + 1."""
    f = presets.get("ddpm")
    scheduler = _use_float64_tables(_ddpm_scheduler(D))
    x0, eps = MIXTURE.sample(BATCH, torch.Generator().manual_seed(8)), _latents(9)
    j = torch.tensor([0, 1, 17, 500, 998, 999] + [250] * (BATCH - 6))
    ref = scheduler.add_noise(x0, eps, j)
    t = (j + 1).to(F64)[:, None]
    assert rel_err(f.scale(t) * (x0 + f.sigma(t) * eps), ref) < TIGHT


# ---------------------------------------------------------------------------
# flow_matching (facebookresearch): ODESolver, conditional-OT path.


@pytest.fixture(scope="module")
def FM():
    pytest.importorskip("torchdiffeq")
    solver = pytest.importorskip("flow_matching.solver")
    path = pytest.importorskip("flow_matching.path")
    return solver, path


def _their_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """flow_matching's u_t(x) = E[x_1 - x_0 | x_t = x], time 0 = noise .. 1 = data, from our denoiser.

    With our t' = 1 - t: x = (1 - t') x_data + t' eps, our velocity is eps - x_data = (x - D) / t' with
    D = D(x / (1 - t'); t' / (1 - t')), and theirs is minus that. At t = 0 (t' = 1, sigma = inf) D is
    the mixture mean."""
    t_ours = 1 - torch.as_tensor(t, dtype=F64)
    if t_ours == 1:
        d = MIXTURE.mean.expand_as(x)
    else:
        d = denoiser(x / (1 - t_ours), (t_ours / (1 - t_ours)).expand(x.shape[0]))
    return -(x - d) / t_ours


def test_flow_matching_cond_ot_path_is_our_flow_formulation(FM):
    _, path = FM
    f = presets.get("flow")
    x_data, noise = MIXTURE.sample(BATCH, torch.Generator().manual_seed(4)), _latents(5)
    t_theirs = torch.linspace(0.03, 0.97, BATCH, dtype=F64)
    sample = path.CondOTProbPath().sample(x_0=noise, x_1=x_data, t=t_theirs)
    t = (1 - t_theirs)[:, None]
    assert rel_err(f.scale(t) * (x_data + f.sigma(t) * noise), sample.x_t) < TIGHT
    # Our network's training target (the velocity eps - x_0) is minus their dx_t = x_1 - x_0.
    assert rel_err(f.training_target(x_data, noise, f.sigma(t)), -sample.dx_t) < TIGHT


@pytest.mark.parametrize("num_steps", [8, 10, 25])
def test_flow_matching_euler(FM, num_steps):
    """Their Euler walks t = 0, 1/N, ..., 1 from x = noise; ours walks t' = 1 - t from t'_0 = 1 - 1e-9
    (samplers.discretizations.SIGMA_INFINITY: sigma(1) = inf is replaced by 1e9) from
    x = latents * s(t'_0) sigma(t'_0) = latents * t'_0. The start state and the first step's length differ
    by ~1e-9 relative, so the samples agree to ~1e-7 relative, not to round-off."""
    solver, _ = FM
    ours, info = _ours("flow", "euler", "uniform-t", num_steps=num_steps)
    assert info["nfe"] == num_steps
    t_steps = info["t_steps"]
    assert float(1 - t_steps[0]) == pytest.approx(1e-9, rel=1e-6)
    assert torch.allclose(t_steps[1:], 1 - torch.arange(1, num_steps + 1, dtype=F64) / num_steps, rtol=0, atol=1e-15)
    ref = solver.ODESolver(velocity_model=_their_velocity).sample(
        x_init=_latents(), step_size=1.0 / num_steps, method="euler", time_grid=torch.tensor([0.0, 1.0], dtype=F64)
    )
    assert ref.dtype == F64
    err = rel_err(ours, ref)
    assert err < 1e-7
    # ... and the residual is our 1e-9 start, not a solver difference: their ODESolver is, to round-off,
    # the exact t' = 1 Euler walk on the same grid, written out here.
    x = _latents()
    grid = 1 - torch.arange(num_steps + 1, dtype=F64) / num_steps
    for t, t_next in zip(grid[:-1], grid[1:]):
        x = x + (t_next - t) * -_their_velocity(x, 1 - t)
    assert rel_err(x, ref) < TIGHT
