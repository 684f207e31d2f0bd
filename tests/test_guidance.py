"""Guided denoisers (edm_space.guidance) and the branches toy (edm_space.toy_branches).

The references are independent of the code under test: the guided exact
denoiser of a class-conditional 1-D Gaussian mixture is written out by hand
(each component's posterior mean times its responsibility, scipy densities),
batched classifier-free guidance is compared with two separate calls of the
same network and its forward passes are counted by a wrapper network, and
samplers are run with and without the guided denoiser.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

import presets
import samplers
from conftest import one_torch_thread
from edm_space.denoiser import Denoiser
from edm_space.errors import ConfigError
from edm_space.guidance import GuidedDenoiser, null_labels
from edm_space.ideal import GaussianMixtureDenoiser
from edm_space.networks.mlp import MLP
from edm_space.toy_branches import NUM_CLASSES, branches, exact_denoiser, mixture_parameters

F64 = torch.float64

# A class-conditional 1-D mixture: 4 components, 2 classes, joint weights P(c, k).
MEANS_1D = np.array([-2.0, -0.5, 0.7, 2.2])
VARS_1D = np.array([0.1, 0.3, 0.05, 0.2])
JOINT_1D = np.array([[0.30, 0.20, 0.00, 0.05], [0.00, 0.10, 0.25, 0.10]])


def mixture_1d() -> GaussianMixtureDenoiser:
    return GaussianMixtureDenoiser(
        torch.tensor(MEANS_1D)[:, None], torch.tensor(VARS_1D), class_weights=torch.tensor(JOINT_1D)
    )


def posterior_mean_1d(x: np.ndarray, sigma: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """E[x_0 | x] for x_0 ~ sum_k w_k N(m_k, v_k): sum_k r_k (m_k + v_k / (v_k + sigma^2) (x - m_k))."""
    noisy_var = VARS_1D[None] + sigma[:, None] ** 2
    r = weights[None] * scipy.stats.norm.pdf(x[:, None], MEANS_1D[None], np.sqrt(noisy_var))
    r /= r.sum(axis=1, keepdims=True)
    return (r * (MEANS_1D[None] + VARS_1D[None] / noisy_var * (x[:, None] - MEANS_1D[None]))).sum(axis=1)


def blurred(mixture: GaussianMixtureDenoiser, extra_variance: float) -> GaussianMixtureDenoiser:
    """A 'bad version' of an exact model: every component widened (what a weak model learns)."""
    covs = mixture.covariances + extra_variance * torch.eye(mixture.dim, dtype=F64)
    joint = mixture.class_priors[:, None] * mixture.class_weights
    return GaussianMixtureDenoiser(mixture.means, covs, class_weights=joint)


class Counting:
    """Wraps a denoiser, recording the rows, sigmas and labels of every call."""

    def __init__(self, denoiser):
        self.denoiser = denoiser
        self.batches, self.sigmas, self.labels = [], [], []

    def __call__(self, x_hat, sigma, labels=None):
        self.batches.append(x_hat.shape[0])
        self.sigmas.append(sigma.clone())
        self.labels.append(None if labels is None else labels.clone())
        return self.denoiser(x_hat, sigma) if labels is None else self.denoiser(x_hat, sigma, labels)


class CountingNetwork(nn.Module):
    """A network F(x, c_noise, labels) that records the batch size and labels of each forward pass."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network
        self.batches, self.labels = [], []

    def forward(self, x, c_noise, labels=None):
        self.batches.append(x.shape[0])
        self.labels.append(labels)
        return self.network(x, c_noise, labels)


def small_conditional_network(num_classes: int = 3, seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    net = MLP((2,), width=32, depth=2, emb_dim=16, label_dim=num_classes)
    nn.init.normal_(net.out.weight, std=0.3)  # the output layer starts at zero; make F depend on its input
    nn.init.normal_(net.label.weight, std=1.0)
    return net.eval()


# --------------------------------------------------------------------------- exact closed form


@pytest.mark.parametrize("weight", [0.0, 1.0, 2.5, 4.0])
def test_guided_exact_denoiser_equals_hand_closed_form(weight):
    gm = mixture_1d()
    gen = np.random.default_rng(0)
    sigma = np.array([0.05, 0.2, 0.5, 1.0, 2.0, 5.0] * 2)
    x = gen.normal(size=sigma.shape) * 1.5
    classes = np.array([0, 1] * 6)
    one_hot = torch.nn.functional.one_hot(torch.tensor(classes), 2).to(F64)
    marginal = JOINT_1D.sum(axis=0) / JOINT_1D.sum()
    per_class = JOINT_1D / JOINT_1D.sum(axis=1, keepdims=True)
    d_uncond = posterior_mean_1d(x, sigma, marginal)
    d_cond = np.array(
        [posterior_mean_1d(x[i : i + 1], sigma[i : i + 1], per_class[classes[i]])[0] for i in range(len(x))]
    )
    expected = d_uncond + weight * (d_cond - d_uncond)  # classifier-free guidance of the exact model

    x_t, s_t = torch.tensor(x)[:, None], torch.tensor(sigma)
    for labels in (one_hot, torch.tensor(classes)):  # network-contract one-hot and class indices
        guided = GuidedDenoiser(gm, weight, labels=labels)
        np.testing.assert_allclose(guided(x_t, s_t)[:, 0].numpy(), expected, rtol=1e-10, atol=1e-12)
    # the two ingredients on their own: conditional and null-label exact denoisers
    np.testing.assert_allclose(gm(x_t, s_t, one_hot)[:, 0].numpy(), d_cond, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gm(x_t, s_t, null_labels(one_hot))[:, 0].numpy(), d_uncond, rtol=1e-10, atol=1e-12)

    # with an interval only the rows with 0.2 < sigma <= 2 are guided; the rest are conditional
    inside = (sigma > 0.2) & (sigma <= 2.0)
    guided = GuidedDenoiser(gm, weight, labels=one_hot, interval=(0.2, 2.0))
    np.testing.assert_allclose(
        guided(x_t, s_t)[:, 0].numpy(), np.where(inside, expected, d_cond), rtol=1e-10, atol=1e-12
    )
    # one pass of the 12 conditional rows plus the null copies of the guided rows
    assert (guided.calls, guided.forward_passes, guided.rows) == (1, 1, len(x) + inside.sum())


def test_autoguidance_of_exact_models_equals_hand_closed_form():
    """Guiding the exact model with a widened copy: both terms are closed-form posterior means."""
    gm = mixture_1d()
    wide = blurred(gm, 0.3)
    gen = np.random.default_rng(1)
    sigma = np.array([0.1, 0.4, 1.0, 3.0])
    x = gen.normal(size=4)
    classes = np.array([1, 0, 0, 1])
    per_class = JOINT_1D / JOINT_1D.sum(axis=1, keepdims=True)
    d_main = np.array([posterior_mean_1d(x[i : i + 1], sigma[i : i + 1], per_class[classes[i]])[0] for i in range(4)])
    # the guide's posterior mean: the same formula with variances v_k + 0.3
    d_guide = []
    for i in range(4):
        v = VARS_1D + 0.3
        noisy = v + sigma[i] ** 2
        r = per_class[classes[i]] * scipy.stats.norm.pdf(x[i], MEANS_1D, np.sqrt(noisy))
        r /= r.sum()
        d_guide.append((r * (MEANS_1D + v / noisy * (x[i] - MEANS_1D))).sum())
    d_guide = np.array(d_guide)
    guided = GuidedDenoiser(gm, 3.0, labels=torch.tensor(classes), guide=wide)
    got = guided(torch.tensor(x)[:, None], torch.tensor(sigma))[:, 0].numpy()
    np.testing.assert_allclose(got, d_guide + 3.0 * (d_main - d_guide), rtol=1e-10, atol=1e-12)
    assert (guided.calls, guided.forward_passes, guided.rows) == (1, 2, 8)


# --------------------------------------------------------------------------- w = 1, w = 0


@pytest.mark.parametrize("mode", ["classifier-free", "autoguidance"])
def test_weight_one_is_conditional_and_weight_zero_is_the_guide(mode):
    gm = exact_denoiser()
    guide = blurred(gm, 0.01) if mode == "autoguidance" else None
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(16, 2, generator=gen, dtype=F64)
    sigma = torch.exp(torch.linspace(-3, 2, 16, dtype=F64))
    labels = torch.nn.functional.one_hot(torch.arange(16) % NUM_CLASSES, NUM_CLASSES).to(F64)
    conditional = gm(x, sigma, labels)
    guide_value = gm(x, sigma, torch.zeros_like(labels)) if guide is None else guide(x, sigma, labels)
    assert not torch.allclose(conditional, guide_value)  # otherwise the checks below are empty
    one = GuidedDenoiser(gm, 1.0, labels=labels, guide=guide)
    zero = GuidedDenoiser(gm, 0.0, labels=labels, guide=guide)
    torch.testing.assert_close(one(x, sigma), conditional, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(zero(x, sigma), guide_value, rtol=1e-12, atol=1e-14)
    assert one.kind == mode


@pytest.mark.parametrize("mode", ["classifier-free", "autoguidance"])
@pytest.mark.parametrize("preset", ["edm", "vp"])
def test_interval_that_excludes_every_step_is_unguided_sampling(mode, preset):
    gm = exact_denoiser()
    labels = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 0, 1]), NUM_CLASSES).to(F64)
    latents = torch.randn(5, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    main = Counting(gm)
    guide = Counting(blurred(gm, 0.01)) if mode == "autoguidance" else None
    guided = GuidedDenoiser(main, 3.0, labels=labels, guide=guide, interval=(1e4, 1e5))  # above every sigma_max
    info: dict = {}
    got = samplers.sample(guided, latents, formulation=preset, solver="heun", num_steps=6, info=info)
    want = samplers.sample(lambda x, s: gm(x, s, labels), latents, formulation=preset, solver="heun", num_steps=6)
    assert torch.equal(got, want)
    nfe = info["nfe"]
    assert main.batches == [5] * nfe and all(torch.equal(seen, labels) for seen in main.labels)  # no null rows
    assert guide is None or guide.batches == []  # the guide is never called
    assert (guided.calls, guided.guided_calls, guided.forward_passes, guided.rows) == (nfe, 0, nfe, 5 * nfe)
    # while the same guidance inside the interval changes the samples
    inside = GuidedDenoiser(gm, 3.0, labels=labels, guide=None if guide is None else guide.denoiser)
    assert not torch.allclose(samplers.sample(inside, latents, formulation=preset, solver="heun", num_steps=6), want)


def test_partial_interval_guides_exactly_the_steps_inside():
    gm = exact_denoiser()
    labels = torch.tensor([0, 1, 0, 1])
    latents = torch.randn(4, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    lo, hi = 0.3, 2.0
    for guide in (None, Counting(blurred(gm, 0.02))):
        main = Counting(gm)
        guided = GuidedDenoiser(main, 2.0, labels=labels, guide=guide, interval=(lo, hi))
        info: dict = {}
        samplers.sample(guided, latents, formulation="edm", solver="heun", num_steps=10, info=info)
        levels = [float(s[0]) for s in main.sigmas]
        inside = sum(lo < s <= hi for s in levels)
        assert 0 < inside < info["nfe"]
        if guide is None:  # one pass per call; 8 rows inside the interval, 4 outside
            assert main.batches == [8 if lo < s <= hi else 4 for s in levels]
            assert (guided.forward_passes, guided.rows) == (info["nfe"], 4 * info["nfe"] + 4 * inside)
            for seen, s in zip(main.labels, levels):
                expected = torch.cat([labels, torch.full((4,), -1)]) if lo < s <= hi else labels
                assert torch.equal(seen, expected)
        else:
            assert [float(s[0]) for s in guide.sigmas] == [s for s in levels if lo < s <= hi]
            assert guided.forward_passes == info["nfe"] + inside
        assert guided.guided_calls == inside and guided.calls == info["nfe"]


def test_per_row_interval_mixes_guided_and_plain_rows():
    gm = exact_denoiser()
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    sigma = torch.tensor([0.1, 0.5, 1.0, 3.0, 0.5, 0.05], dtype=F64)
    labels = torch.tensor([0, 1, 1, 0, 0, 1])
    guided = GuidedDenoiser(gm, 2.0, labels=labels, interval=(0.2, 1.0))
    everywhere = GuidedDenoiser(gm, 2.0, labels=labels)
    inside = (sigma > 0.2) & (sigma <= 1.0)
    got = guided(x, sigma)
    torch.testing.assert_close(got[inside], everywhere(x, sigma)[inside], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got[~inside], gm(x, sigma, labels)[~inside], rtol=1e-12, atol=1e-14)
    assert guided.rows == 6 + int(inside.sum())


# --------------------------------------------------------------------------- batched CFG with a network


def test_batched_cfg_is_one_pass_of_2b_rows_and_equals_two_calls():
    counting = CountingNetwork(small_conditional_network())
    denoiser = Denoiser(counting, presets.get("edm"))
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(7, 2, generator=gen, dtype=F64)
    sigma = torch.exp(torch.randn(7, generator=gen, dtype=F64))
    labels = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 0, 1, 2, 2]), 3).float()
    with torch.no_grad():
        conditional = denoiser(x, sigma, labels)
        unconditional = denoiser(x, sigma, torch.zeros_like(labels))
        # the null label: an all-zero one-hot row is the same as no label at all
        torch.testing.assert_close(unconditional, denoiser(x, sigma, None), rtol=0, atol=0)
        assert not torch.allclose(conditional, unconditional, atol=1e-3)
        counting.batches.clear()
        counting.labels.clear()
        guided = GuidedDenoiser(denoiser, 2.5, labels=labels)
        got = guided(x, sigma)
    assert counting.batches == [14]
    assert torch.equal(counting.labels[0], torch.cat([labels, torch.zeros_like(labels)]))
    # float32 network: batched and separate passes agree to rounding
    torch.testing.assert_close(got, unconditional + 2.5 * (conditional - unconditional), rtol=1e-5, atol=1e-6)
    assert (guided.calls, guided.forward_passes, guided.rows) == (1, 1, 14)


def test_cfg_uses_the_labels_bound_to_a_denoiser():
    net = small_conditional_network()
    labels = torch.nn.functional.one_hot(torch.tensor([2, 0, 1]), 3).float()
    bound = Denoiser(net, presets.get("vp"), labels=labels)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(7), dtype=F64)
    sigma = torch.full((3,), 0.8, dtype=F64)
    with torch.no_grad():
        via_bound = GuidedDenoiser(bound, 1.7)(x, sigma)
        explicit = GuidedDenoiser(Denoiser(net, presets.get("vp")), 1.7, labels=labels)(x, sigma)
    torch.testing.assert_close(via_bound, explicit, rtol=0, atol=0)


def test_autoguidance_with_networks_calls_each_once_with_the_same_labels():
    main, weak = CountingNetwork(small_conditional_network(seed=0)), CountingNetwork(small_conditional_network(seed=1))
    f = presets.get("flow")
    labels = torch.nn.functional.one_hot(torch.tensor([1, 2, 0, 0]), 3).float()
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(8), dtype=F64)
    sigma = torch.full((4,), 1.3, dtype=F64)
    with torch.no_grad():
        d_main, d_weak = Denoiser(main, f)(x, sigma, labels), Denoiser(weak, f)(x, sigma, labels)
        got = GuidedDenoiser(Denoiser(main, f), 2.0, labels=labels, guide=Denoiser(weak, f))(x, sigma)
    torch.testing.assert_close(got, d_weak + 2.0 * (d_main - d_weak), rtol=1e-12, atol=1e-12)
    assert main.batches == [4, 4] and weak.batches == [4, 4]
    assert all(torch.equal(seen, labels) for seen in main.labels + weak.labels)


def test_unconditional_autoguidance_passes_no_labels():
    calls = []

    def plain(x_hat, sigma):  # an unconditional denoiser takes no labels argument
        calls.append(x_hat.shape[0])
        return 0.5 * x_hat

    def weak(x_hat, sigma):
        calls.append(x_hat.shape[0])
        return 0.25 * x_hat

    x = torch.ones(3, 2, dtype=F64)
    out = GuidedDenoiser(plain, 3.0, guide=weak)(x, torch.full((3,), 1.0, dtype=F64))
    torch.testing.assert_close(out, (0.25 + 3.0 * 0.25) * x)
    assert calls == [3, 3]


# --------------------------------------------------------------------------- every solver and preset


@pytest.mark.parametrize("preset", presets.names())
def test_guidance_runs_with_every_solver_and_reports_honest_costs(preset):
    gm = exact_denoiser()
    weak = blurred(gm, 0.01)
    labels = torch.nn.functional.one_hot(torch.tensor([0, 1, 0, 1, 1, 0]), NUM_CLASSES).to(F64)
    latents = torch.randn(6, 2, generator=torch.Generator().manual_seed(9), dtype=F64)
    with one_torch_thread():
        for solver in samplers.names():
            main = Counting(gm)
            cfg = GuidedDenoiser(main, 2.0, labels=labels)
            info: dict = {}
            out = samplers.sample(cfg, latents, formulation=preset, solver=solver, num_steps=4, info=info)
            nfe = info["nfe"]
            assert torch.isfinite(out).all(), (preset, solver)
            assert cfg.calls == cfg.forward_passes == nfe, (preset, solver)
            assert cfg.rows == 12 * nfe and main.batches == [12] * nfe, (preset, solver)

            main, guide = Counting(gm), Counting(weak)
            auto = GuidedDenoiser(main, 2.0, labels=labels, guide=guide)
            info = {}
            out = samplers.sample(auto, latents, formulation=preset, solver=solver, num_steps=4, info=info)
            nfe = info["nfe"]
            assert torch.isfinite(out).all(), (preset, solver)
            assert len(main.batches) == len(guide.batches) == nfe == auto.calls, (preset, solver)
            assert auto.forward_passes == 2 * nfe and auto.rows == 12 * nfe, (preset, solver)


# --------------------------------------------------------------------------- bad input


def test_bad_guidance_input():
    gm = exact_denoiser()
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ConfigError, match="needs class labels"):
        GuidedDenoiser(gm, 2.0)(x, torch.ones(2, dtype=F64))
    with pytest.raises(ConfigError, match="batch of 2"):
        GuidedDenoiser(gm, 2.0, labels=torch.tensor([0, 1, 1]))(x, torch.ones(2, dtype=F64))
    for weight in (math.nan, math.inf, "2", True):
        with pytest.raises(ConfigError, match="weight"):
            GuidedDenoiser(gm, weight)
    for interval in ((2.0, 1.0), (-1.0, 1.0), (1.0,), "ab", (1.0, math.nan)):
        with pytest.raises(ConfigError, match="interval") as err:
            GuidedDenoiser(gm, 2.0, interval=interval)
        assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- the branches toy


def test_branches_sample_the_exact_class_conditional_mixture():
    means, covs, joint = mixture_parameters()
    n = 100_000
    points, labels = branches(n, seed=0)
    assert points.shape == (n, 2) and points.dtype == torch.float32
    assert labels.shape == (n,) and labels.dtype == torch.int64
    assert set(labels.unique().tolist()) == set(range(NUM_CLASSES))
    x = points.to(F64)
    for c in range(NUM_CLASSES):
        p_k = joint[c] / joint[c].sum()
        mean_c = p_k @ means
        second = (p_k[:, None, None] * (covs + means[:, :, None] * means[:, None, :])).sum(0)
        cov_c = second - torch.outer(mean_c, mean_c)
        sel = x[labels == c]
        # about 50,000 draws per class: standard errors sqrt(var / n) and about sqrt(2 var^2 / n)
        scale = cov_c.diagonal().max().item()
        torch.testing.assert_close(sel.mean(0), mean_c, rtol=0, atol=5 * (scale / sel.shape[0]) ** 0.5)
        torch.testing.assert_close(torch.cov(sel.T), cov_c, rtol=0, atol=8 * scale * (2 / sel.shape[0]) ** 0.5)
        assert abs(sel.shape[0] / n - float(joint[c].sum() / joint.sum())) < 5 * (0.25 / n) ** 0.5
    # the units of the other toy sets: each coordinate of the law has mean 0 and std 0.5 exactly
    w = joint.sum(0) / joint.sum()
    mean = w @ means
    var = w @ (covs.diagonal(dim1=1, dim2=2) + means**2) - mean**2
    torch.testing.assert_close(mean, torch.zeros(2, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(var.sqrt(), torch.full((2,), 0.5, dtype=F64), rtol=0, atol=1e-12)


def test_branches_are_thin_and_each_class_owns_its_twigs():
    means, covs, joint = mixture_parameters()
    stds = torch.linalg.eigvalsh(covs).sqrt()  # ascending: across, along
    assert (stds[:, 0] / stds[:, 1] < 0.25).all()  # every component is elongated
    assert ((joint > 0).sum(0) == 1).all()  # each component belongs to one class
    assert joint.shape[0] == NUM_CLASSES and exact_denoiser().num_classes == NUM_CLASSES


def test_branches_seeding():
    a, la = branches(500, seed=3)
    b, lb = branches(500, seed=np.random.default_rng(3))
    assert torch.equal(a, b) and torch.equal(la, lb)
    c, _ = branches(500, seed=4)
    assert not torch.equal(a, c)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="n must"):
            branches(bad)
    with pytest.raises(ConfigError, match="seed"):
        branches(5, seed=-1)


def edm2_sampler_with_interval(D, labels, latents, t_steps, weight, interval):
    """EDM2's edm_sampler (Karras et al. 2024, generate_images.py), deterministic, written out here, with a guided
    denoiser that applies classifier-free guidance only where sigma_lo < t <= sigma_hi (Kynkaanniemi et al. 2024)."""
    lo, hi = interval

    def denoise(x, t):
        sigma = torch.full((len(x),), t, dtype=F64)
        cond = D(x, sigma, labels)
        if not lo < t <= hi:
            return cond
        uncond = D(x, sigma, torch.full_like(labels, -1))
        return uncond + weight * (cond - uncond)

    x_next = latents * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_hat, t_hat = x_next, t_cur
        d_cur = (x_hat - denoise(x_hat, t_hat)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if i < len(t_steps) - 2:
            d_prime = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


def test_heun_with_an_interval_ending_on_sampling_levels_matches_edm2():
    gm = exact_denoiser()
    labels = torch.tensor([0, 1, 0, 1, 1])
    latents = torch.randn(5, 2, generator=torch.Generator().manual_seed(21), dtype=F64)
    f = presets.get("edm")
    t_steps = samplers.time_steps(f, 12).tolist()
    # both ends of the interval are sampling levels: the corrector of one step and the next step's first
    # evaluation share the level, and must take the same guidance decision there. With 12 edm steps,
    # t_5 + (t_6 - t_5) and t_8 + (t_9 - t_8) are one ulp above t_6 and t_9.
    assert t_steps[5] + (t_steps[6] - t_steps[5]) > t_steps[6] and t_steps[8] + (t_steps[9] - t_steps[8]) > t_steps[9]
    for interval in ((t_steps[9], t_steps[3]), (t_steps[8], t_steps[6]), (t_steps[9], t_steps[6])):
        guided = GuidedDenoiser(gm, 2.5, labels=labels, interval=interval)
        ours = samplers.sample(guided, latents, formulation="edm", solver="heun", num_steps=12)
        want = edm2_sampler_with_interval(gm, labels, latents, t_steps, 2.5, interval)
        assert torch.allclose(ours, want, rtol=0, atol=1e-10), (ours - want).abs().max()
