"""The KL and VQ autoencoders against closed forms, hand-computed values and sampling bounds.

KL-VAE: the closed-form KL against Monte Carlo, the reparameterized draw's moments, and the
ELBO / IWAE bounds on a linear-Gaussian model whose marginal p(x) = N(b, W W^T + sigma_x^2 I)
is known. VQ-VAE: straight-through gradients, the codebook / commitment losses and the EMA
update on hand-computed cases, dead-code restarts. Shapes, and a few training steps on digits.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from edm_space import autoencoders
from edm_space.autoencoders.kl import KLAutoencoder, kl_divergence
from edm_space.autoencoders.vq import VQAutoencoder
from edm_space.data import load
from edm_space.errors import ConfigError

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------
# KL-VAE: the closed-form KL term.


def test_closed_form_kl_matches_a_monte_carlo_estimate():
    mean = torch.tensor([[0.3, -1.2, 0.0, 2.0]], dtype=F64)
    logvar = torch.tensor([[0.0, -1.5, 0.7, -0.3]], dtype=F64)
    std = np.exp(0.5 * logvar.numpy()[0])
    rng = np.random.default_rng(0)
    n = 200_000
    z = mean.numpy()[0] + std * rng.standard_normal((n, 4))
    # KL(q || p) = E_q[log q(z) - log p(z)], the densities from scipy.
    log_ratio = (stats.norm.logpdf(z, mean.numpy()[0], std) - stats.norm.logpdf(z)).sum(axis=1)
    standard_error = log_ratio.std(ddof=1) / math.sqrt(n)
    closed_form = float(kl_divergence(mean, logvar)[0])
    assert abs(closed_form - log_ratio.mean()) < 5 * standard_error
    assert standard_error < 0.01  # the check resolves the KL to about 0.05 nats


# ---------------------------------------------------------------------------
# KL-VAE on a linear-Gaussian model: the reparameterized draw, ELBO <= IWAE(k) <= log p(x), the loss.

SIGMA_X = 0.5
# Orthogonal columns make W^T W diagonal, so the exact posterior is a diagonal Gaussian.
W = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
B = np.array([0.3, -0.2, 0.1, 0.5])


class LinearEncoder(nn.Module):
    """x [batch, 1, 2, 2] -> (mean = A x + c, logvar = v) as [batch, 4, 1, 1]."""

    def __init__(self, A, c, v):
        super().__init__()
        self.A, self.c, self.v = (torch.as_tensor(t, dtype=F64) for t in (A, c, v))

    def forward(self, x):
        mean = x.reshape(x.shape[0], -1) @ self.A.T + self.c
        return torch.cat([mean, self.v.expand_as(mean)], dim=1)[:, :, None, None]


class LinearDecoder(nn.Module):
    """z [batch, 2, 1, 1] -> W z + b as [batch, 1, 2, 2]."""

    def forward(self, z):
        return (z.reshape(z.shape[0], -1) @ torch.as_tensor(W.T) + torch.as_tensor(B)).reshape(-1, 1, 2, 2)


def linear_posterior(exact):
    """(A, c, v) of q(z|x) = N(A x + c, diag exp(v)): the exact posterior, or a deliberately wrong one."""
    covariance = np.linalg.inv(np.eye(2) + W.T @ W / SIGMA_X**2)  # Bishop 2006, eq. 12.42
    A = covariance @ W.T / SIGMA_X**2
    v = np.log(np.diag(covariance))
    if not exact:
        A, v = 0.5 * A, v + 1.2  # mean pulled towards 0, variance too wide
    return A, -A @ B, v


def linear_vae(exact):
    vae = KLAutoencoder((1, 2, 2), latent_channels=2, downsample=2, channels=8, decoder_std=SIGMA_X)
    vae.encoder = LinearEncoder(*linear_posterior(exact))
    vae.decoder = LinearDecoder()
    return vae.double()


def exact_log_likelihood(x):
    """log N(x; b, W W^T + sigma_x^2 I) per row of x [n, 4]."""
    return stats.multivariate_normal(B, W @ W.T + SIGMA_X**2 * np.eye(4)).logpdf(x)


def exact_elbo(x, exact):
    """E_q[log p(x|z)] - KL in closed form: E_q ||x - W z - b||^2 = ||x - W m - b||^2 + sum_j s_j^2 ||W_j||^2."""
    A, c, v = linear_posterior(exact)
    m = x @ A.T + c
    s2 = np.exp(v)
    residual = ((x - m @ W.T - B) ** 2).sum(axis=1) + (s2 * (W**2).sum(axis=0)).sum()
    expected_log_likelihood = -residual / (2 * SIGMA_X**2) - 2 * math.log(2 * math.pi * SIGMA_X**2)
    kl = 0.5 * (m**2 + s2 - 1 - v).sum(axis=1)
    return expected_log_likelihood - kl


def model_draws(n, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 2)) @ W.T + B + SIGMA_X * rng.standard_normal((n, 4))


def repeated_bounds(vae, x, k, repeats, seed):
    """log_likelihood_bounds on `repeats` copies of each row of x: dict of [n, repeats] numpy arrays."""
    images = torch.as_tensor(x).repeat_interleave(repeats, dim=0).reshape(-1, 1, 2, 2)
    bounds = vae.log_likelihood_bounds(images, k=k, generator=torch.Generator().manual_seed(seed))
    return {name: value.numpy().reshape(len(x), repeats) for name, value in bounds.items()}


def mean_and_error(values):
    return values.mean(axis=1), values.std(axis=1, ddof=1) / math.sqrt(values.shape[1])


def test_reparameterized_latents_have_the_posterior_mean_and_variance():
    vae = linear_vae(exact=False)
    x = torch.as_tensor(model_draws(1, seed=6)).reshape(1, 1, 2, 2)
    n = 40_000
    with torch.no_grad():
        mean, logvar = vae.encode(x)
        draws = vae.latents(x.expand(n, -1, -1, -1), mode="sample", generator=torch.Generator().manual_seed(1))
    mean, variance = mean[0].numpy(), np.exp(logvar[0].numpy())
    np.testing.assert_allclose(variance.reshape(-1), np.exp(linear_posterior(exact=False)[2]))
    assert (np.abs(variance - 1.0) > 0.5).all()  # the posterior is not the prior, so matching it means something
    # Sample mean: standard error sqrt(var / n); sample variance of a Gaussian: sqrt(2 var^2 / (n - 1)).
    draws = draws.numpy()
    assert (np.abs(draws.mean(axis=0) - mean) < 5 * np.sqrt(variance / n)).all()
    assert (np.abs(draws.var(axis=0, ddof=1) - variance) < 5 * variance * math.sqrt(2 / (n - 1))).all()


def test_iwae_equals_the_log_likelihood_under_the_exact_posterior():
    # With q(z|x) = p(z|x) every importance weight p(x, z) / q(z|x) equals p(x) exactly.
    x = model_draws(5, seed=0)
    bounds = repeated_bounds(linear_vae(exact=True), x, k=3, repeats=1, seed=1)
    np.testing.assert_allclose(bounds["iwae"][:, 0], exact_log_likelihood(x), rtol=0, atol=1e-9)
    np.testing.assert_allclose(exact_elbo(x, exact=True), exact_log_likelihood(x), rtol=0, atol=1e-9)


@pytest.mark.parametrize("exact", [True, False])
def test_elbo_estimate_matches_its_closed_form(exact):
    x = model_draws(4, seed=2)
    elbo, error = mean_and_error(repeated_bounds(linear_vae(exact), x, k=4, repeats=500, seed=3)["elbo"])
    assert (np.abs(elbo - exact_elbo(x, exact)) < 5 * error).all()


def test_elbo_below_iwae_below_log_likelihood_and_iwae_rises_with_k():
    vae = linear_vae(exact=False)
    x = model_draws(4, seed=4)
    log_likelihood, elbo = exact_log_likelihood(x), exact_elbo(x, exact=False)
    assert (log_likelihood - elbo > 2.0).all()  # the wrong posterior leaves a gap of over two nats
    iwae = {k: mean_and_error(repeated_bounds(vae, x, k=k, repeats=400, seed=k)["iwae"]) for k in (1, 5, 50)}
    # k = 1 is the ELBO in expectation (Burda et al. 2016, eq. 8).
    assert (np.abs(iwae[1][0] - elbo) < 5 * iwae[1][1]).all()
    for value, error in iwae.values():
        assert (value < log_likelihood + 5 * error).all()
    assert (iwae[5][0] - 5 * iwae[5][1] > elbo).all()
    # Averaged over the items, the bound rises with k (Burda et al. 2016, Theorem 1).
    for small, large in ((1, 5), (5, 50)):
        (low, low_error), (high, high_error) = iwae[small], iwae[large]
        assert high.mean() - low.mean() > 5 * np.sqrt((low_error**2 + high_error**2).sum()) / len(x)


def test_default_loss_is_the_rescaled_negative_elbo():
    # E[total] = (2 sigma_x^2 / D) (-ELBO) - sigma_x^2 log(2 pi sigma_x^2), D = 4 data elements.
    vae = linear_vae(exact=False)
    x = model_draws(4, seed=5)
    images = torch.as_tensor(x).repeat(250, 1).reshape(-1, 1, 2, 2)
    with torch.no_grad():
        totals = np.array([float(vae.loss(images, torch.Generator().manual_seed(s))["total"]) for s in range(40)])
    expected = (2 * SIGMA_X**2 / 4) * -exact_elbo(x, exact=False).mean() - SIGMA_X**2 * math.log(2 * math.pi * SIGMA_X**2)
    assert abs(totals.mean() - expected) < 5 * totals.std(ddof=1) / math.sqrt(len(totals))


# ---------------------------------------------------------------------------
# VQ-VAE: the quantizer, its losses and the codebook updates.


def vq_model(**options):
    torch.manual_seed(0)
    settings = {"latent_channels": 2, "downsample": 2, "channels": 8, "num_codes": 4, **options}
    return VQAutoencoder((1, 8, 8), **settings).double()


def as_latent_map(vectors):
    """Rows [n, D] -> a latent map [1, D, 1, n], whose positions are the rows in order."""
    return torch.as_tensor(vectors, dtype=F64).T.reshape(1, -1, 1, len(vectors))


def test_quantizer_picks_the_nearest_code_and_passes_the_decoder_gradient_straight_through():
    vq = vq_model(latent_channels=3, num_codes=8)
    with torch.no_grad():
        vq.codebook.copy_(torch.randn(8, 3, dtype=F64))
    z_e = torch.randn(2, 3, 4, 4, dtype=F64, requires_grad=True)
    target = torch.randn(2, 1, 8, 8, dtype=F64)
    z_q, indices, _ = vq.quantize(z_e)
    ((vq.decoder(z_q) - target) ** 2).sum().backward()

    vectors = z_e.detach().permute(0, 2, 3, 1).reshape(-1, 3)
    nearest = torch.cdist(vectors, vq.codebook.detach()).argmin(dim=1)
    assert torch.equal(indices.reshape(-1), nearest)
    codes = vq.codebook.detach()[nearest].reshape(2, 4, 4, 3).permute(0, 3, 1, 2).clone().requires_grad_(True)
    ((vq.decoder(codes) - target) ** 2).sum().backward()
    torch.testing.assert_close(z_q.detach(), codes.detach(), rtol=0, atol=1e-12)  # the forward pass sees the codes
    assert (z_q - z_e).abs().max() > 0.1
    torch.testing.assert_close(z_e.grad, codes.grad, rtol=1e-12, atol=1e-12)
    assert codes.grad.abs().max() > 0


def test_codebook_and_commitment_losses_by_hand():
    vq = vq_model(latent_channels=2, num_codes=2)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=F64))
    z_e = as_latent_map([[0.2, -0.1], [0.9, 1.3], [0.6, 0.5]]).requires_grad_(True)
    _, indices, terms = vq.quantize(z_e)
    values = {name: float(term.detach()) for name, term in terms.items()}
    # Nearest codes 0, 1, 1 (0.6, 0.5 is 0.61 from code 0 and 0.41 from code 1); squared distances
    # 0.05 + 0.10 + 0.41 = 0.56 over 6 latent elements.
    assert indices.reshape(-1).tolist() == [0, 1, 1]
    assert values["codebook"] == pytest.approx(0.56 / 6, abs=1e-12)
    assert values["commitment"] == pytest.approx(0.25 * 0.56 / 6, abs=1e-12)

    # The codebook term moves only the codes: d/de_k = (2/6) sum_{j -> k} (e_k - z_j).
    terms["codebook"].backward(retain_graph=True)
    expected = (2 / 6) * torch.tensor([[-0.2, 0.1], [0.1 + 0.4, -0.3 + 0.5]], dtype=F64)
    torch.testing.assert_close(vq.codebook.grad, expected)
    assert z_e.grad is None or z_e.grad.abs().max() == 0
    # The commitment term moves only the encoder output: d/dz_j = 0.25 (2/6) (z_j - e_k(j)).
    vq.codebook.grad = None
    terms["commitment"].backward()
    expected = 0.25 * (2 / 6) * as_latent_map([[0.2, -0.1], [-0.1, 0.3], [-0.4, -0.5]])
    torch.testing.assert_close(z_e.grad, expected)
    assert vq.codebook.grad is None or vq.codebook.grad.abs().max() == 0


def smoothed_codebook(cluster_size, embed_sum, epsilon):
    """e_i = m_i / N~_i with N~_i = (N_i + eps) / (n + K eps) n (Laplace smoothing)."""
    n = cluster_size.sum()
    return embed_sum / ((cluster_size + epsilon) / (n + len(cluster_size) * epsilon) * n)[:, None]


def test_ema_update_by_hand():
    vq = vq_model(latent_channels=2, num_codes=2, ema=True)  # decay 0.99, epsilon 1e-5
    with torch.no_grad():
        vq.cluster_size.copy_(torch.tensor([2.0, 0.5]))
        vq.embed_sum.copy_(torch.tensor([[1.0, 2.0], [0.5, -0.5]]))
    # Vectors (1, 0) and (3, 2) go to code 0, (-1, 4) to code 1.
    vq.ema_update(as_latent_map([[1.0, 0.0], [3.0, 2.0], [-1.0, 4.0]]), torch.tensor([[[0, 0, 1]]]))
    # N = 0.99 N + 0.01 n: (1.98 + 0.02, 0.495 + 0.01); m = 0.99 m + 0.01 sum: code 0 sums (4, 2), code 1 (-1, 4).
    cluster_size = np.array([2.0, 0.505])
    embed_sum = np.array([[0.99 + 0.04, 1.98 + 0.02], [0.495 - 0.01, -0.495 + 0.04]])
    np.testing.assert_allclose(vq.cluster_size.numpy(), cluster_size, rtol=1e-12)
    np.testing.assert_allclose(vq.embed_sum.numpy(), embed_sum, rtol=1e-12)
    np.testing.assert_allclose(vq.codebook.numpy(), smoothed_codebook(cluster_size, embed_sum, 1e-5), rtol=1e-12)


def test_ema_codebook_moves_in_training_mode_only():
    vq = vq_model(ema=True, restart_after=0)
    x = torch.randn(3, 1, 8, 8, dtype=F64)
    before = {name: getattr(vq, name).clone() for name in ("codebook", "cluster_size", "embed_sum")}
    vq.eval()
    with torch.no_grad():
        assert float(vq.loss(x)["codebook"]) == 0.0
    assert all(torch.equal(getattr(vq, name), value) for name, value in before.items())

    vq.train()
    with torch.no_grad():
        vectors = vq.encode(x).permute(0, 2, 3, 1).reshape(-1, 2)
        vq.loss(x)
    assignments = torch.cdist(vectors, before["codebook"]).argmin(dim=1)
    counts = torch.bincount(assignments, minlength=4).to(F64)
    sums = torch.zeros(4, 2, dtype=F64).index_add_(0, assignments, vectors)
    cluster_size = 0.99 * before["cluster_size"] + 0.01 * counts
    embed_sum = 0.99 * before["embed_sum"] + 0.01 * sums
    torch.testing.assert_close(vq.codebook, smoothed_codebook(cluster_size, embed_sum, 1e-5))


@pytest.mark.parametrize("ema", [False, True])
def test_a_never_chosen_code_is_restarted_to_an_encoder_output(ema):
    vq = vq_model(ema=ema, restart_after=3)
    with torch.no_grad():
        vq.codebook[3] = 1e3
        if ema:
            vq.cluster_size[3], vq.embed_sum[3] = 1.0, 1e3
    x = torch.randn(2, 1, 8, 8, dtype=F64)
    with torch.no_grad():
        vectors = vq.encode(x).permute(0, 2, 3, 1).reshape(-1, 2)  # the batch's encoder outputs
    generator = torch.Generator().manual_seed(0)
    vq.train()
    for step in (1, 2):
        vq.loss(x, generator)
        assert (vq.codebook[3] > 500).all() and int(vq.unused_steps[3]) == step
    used = torch.unique(vq.nearest_codes(vq.encode(x)))
    kept = vq.codebook.detach()[used].clone()
    vq.loss(x, generator)  # the third step without code 3 restarts it
    code = vq.codebook.detach()[3]
    assert torch.cdist(code[None], vectors).min() < 1e-12
    assert int(vq.unused_steps[3]) == 0
    if ema:
        assert float(vq.cluster_size[3]) == 1.0 and torch.equal(vq.embed_sum[3], code)
    else:
        assert torch.equal(vq.codebook.detach()[used], kept)  # codes in use are left alone


def test_usage_and_perplexity_by_hand():
    vq = vq_model(num_codes=4)
    cases = {
        (0, 0, 1, 1): (0.5, 2.0),
        (0, 1, 2, 3): (1.0, 4.0),
        (2, 2, 2, 2): (0.25, 1.0),
        (0, 0, 0, 1): (0.5, math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))),
    }
    for indices, (usage, perplexity) in cases.items():
        got_usage, got_perplexity = vq.code_statistics(torch.tensor(indices))
        assert float(got_usage) == pytest.approx(usage) and float(got_perplexity) == pytest.approx(perplexity)


# ---------------------------------------------------------------------------
# Shapes, options, and training on digits.


@pytest.mark.parametrize("kind", ["kl", "vq"])
@pytest.mark.parametrize(
    "item_shape, downsample, latent_shape",
    [((1, 28, 28), 4, (4, 7, 7)), ((1, 28, 28), 2, (4, 14, 14)), ((1, 8, 8), 4, (4, 2, 2)), ((1, 8, 8), 1, (4, 8, 8))],
)
def test_latent_and_reconstruction_shapes(kind, item_shape, downsample, latent_shape):
    torch.manual_seed(0)
    model = autoencoders.build(kind, item_shape, latent_channels=4, downsample=downsample, channels=8)
    x = torch.randn(3, *item_shape)
    with torch.no_grad():
        z = model.latents(x)
        assert tuple(z.shape) == (3, *latent_shape) and model.latent_shape == latent_shape
        assert model.decode(z).shape == x.shape
        if kind == "kl":
            assert model.sample_prior(5).shape == (5, *item_shape)
            assert model.log_likelihood_bounds(x, k=2)["iwae"].shape == (3,)


def test_bad_options_raise_one_line_config_errors():
    with pytest.raises(ConfigError, match="unknown autoencoder 'gan'; valid: kl, vq"):
        autoencoders.build("gan", (1, 8, 8))
    with pytest.raises(ConfigError, match="downsample 3 is not supported; valid: 1, 2, 4"):
        autoencoders.build("kl", (1, 8, 8), downsample=3)
    with pytest.raises(ConfigError, match=r"image items \[C, H, W\]"):
        autoencoders.build("vq", (2,))
    with pytest.raises(ConfigError, match="does not divide the image size 6x6"):
        autoencoders.build("vq", (1, 6, 6), downsample=4)
    with pytest.raises(ConfigError, match="autoencoder 'kl'.*width"):
        autoencoders.build("kl", (1, 8, 8), width=3)
    with pytest.raises(ConfigError, match="latent mode 'median'"):
        autoencoders.build("kl", (1, 8, 8)).latents(torch.zeros(1, 1, 8, 8), mode="median")


@pytest.mark.parametrize("kind, options", [("kl", {}), ("vq", {"restart_after": 10}), ("vq", {"ema": True, "restart_after": 10})])
def test_a_few_optimizer_steps_lower_the_reconstruction_loss(kind, options):
    x = load("digits", n=64, seed=0)
    torch.manual_seed(0)
    model = autoencoders.build(kind, (1, 8, 8), latent_channels=4, downsample=2, channels=16, **options)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def reconstruction():
        model.eval()
        with torch.no_grad():
            return float(model.loss(x, torch.Generator().manual_seed(1))["reconstruction"])

    before = reconstruction()
    generator = torch.Generator().manual_seed(2)
    model.train()
    for _ in range(40):
        optimizer.zero_grad()
        model.loss(x, generator)["total"].backward()
        optimizer.step()
    after = reconstruction()
    # Better than half the error at initialisation and than half that of predicting the mean image.
    assert after < 0.5 * before and after < 0.5 * float(((x - x.mean(dim=0)) ** 2).mean()), (before, after)
