"""Tests of the non-diffusion families (NICE, GAN, PixelCNN) and of the bits/dim conversion.

References are independent: closed-form Gaussian MLE and scipy densities, autograd
Jacobians, hand-computed softmax log-probabilities, hand-derived bits/dim values,
first-order Taylor decrease of a gradient step, and exact enumeration of a tiny
autoregressive model against its sampler.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from edm_space import families
from edm_space.errors import ConfigError
from edm_space.families import bits
from edm_space.families.gan import GAN
from edm_space.families.nice import NICE, AdditiveCoupling
from edm_space.families.pixelcnn import PixelCNN, categorical

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _seeded():
    """A fixed global seed so the networks' default initializations repeat."""
    torch.manual_seed(0)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randomize(module: torch.nn.Module, std: float, seed: int) -> None:
    """Give every parameter a random, clearly non-zero value (default inits may zero some layers)."""
    generator = seeded(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * std)


# ---------------------------------------------------------------- NICE


def test_additive_coupling_is_exactly_invertible_in_float64():
    coupling = AdditiveCoupling(dim=7, parity=1, width=16, depth=2).double()
    randomize(coupling, 0.5, seed=1)
    x = torch.randn(32, 7, generator=seeded(2), dtype=F64)
    y = coupling(x)
    # The coupling really moves the changed half and leaves the kept half alone.
    assert (y[:, 1::2] - x[:, 1::2]).abs().min() == 0 and (y[:, 0::2] - x[:, 0::2]).abs().max() > 0.1
    assert (coupling.inverse(y) - x).abs().max() < 1e-12


def test_nice_flow_is_exactly_invertible_in_float64():
    model = NICE((10,), couplings=4, width=16, depth=2).double()
    randomize(model, 0.3, seed=3)
    x = torch.randn(16, 10, generator=seeded(4), dtype=F64)
    h, _ = model.encode(x)
    assert (model.decode(h) - x).abs().max() < 1e-12


@pytest.mark.parametrize("prior", ["logistic", "gaussian"])
def test_nice_log_det_matches_autograd_jacobian_and_likelihood_matches_scipy(prior):
    model = NICE((4,), couplings=3, width=8, depth=2, prior=prior).double()
    randomize(model, 0.5, seed=5)
    x = torch.randn(1, 4, generator=seeded(6), dtype=F64)
    with torch.no_grad():
        h, log_det = model.encode(x)
    # The log-determinant is the sum of the scaling layer's log-scales (NICE eq. 6) ...
    assert abs(float(log_det[0]) - float(model.log_scale.detach().sum())) < 1e-12
    # ... and equals log|det| of the full map's Jacobian, computed by autograd.
    jacobian = torch.autograd.functional.jacobian(lambda v: model.encode(v.reshape(1, 4))[0].reshape(4), x.reshape(4))
    _, log_abs_det = torch.linalg.slogdet(jacobian)
    assert abs(float(log_abs_det) - float(log_det[0])) < 1e-10
    prior_density = stats.logistic if prior == "logistic" else stats.norm
    expected = prior_density.logpdf(h.detach().numpy()).sum() + float(log_abs_det)
    assert abs(float(model.log_likelihood(x).detach()[0]) - expected) < 1e-10


def test_nice_scaling_layer_fits_the_gaussian_mle_and_samples_match():
    # One scaling layer over a standard Gaussian prior is the model N(x; 0, exp(-2 s)).
    x = 0.3 * torch.randn(2000, 1, generator=seeded(7), dtype=F64)
    model = NICE((1,), couplings=0, prior="gaussian").double()
    optimizers = families.build_optimizers(model, lr=0.05)
    for _ in range(300):
        model.train_step(x, optimizers, seeded(0))
    fitted_std = math.exp(-float(model.log_scale.detach()[0]))
    mle_std = float(x.pow(2).mean().sqrt())  # closed-form MLE of a zero-mean Gaussian's scale
    assert abs(fitted_std / mle_std - 1) < 1e-4
    with torch.no_grad():
        log_likelihood = model.log_likelihood(x).numpy()
    np.testing.assert_allclose(log_likelihood, stats.norm.logpdf(x[:, 0].numpy(), 0.0, fitted_std), rtol=0, atol=1e-10)
    samples = model.sample(20000, seeded(8))
    assert samples.shape == (20000, 1)
    # Std of 20000 normal draws has relative standard error ~0.5%; clamping at 1 = 3.3 sigma barely matters.
    assert abs(float(samples.std()) / fitted_std - 1) < 0.03


def test_nice_bits_per_dim_is_the_dequantized_density_with_a_7_bit_offset():
    model = NICE((3,), couplings=0, prior="gaussian").double()
    with torch.no_grad():
        model.log_scale.copy_(torch.tensor([0.5, -0.2, 1.0], dtype=F64))
    levels = torch.tensor([[0, 128, 255], [17, 200, 3]], dtype=torch.uint8)
    u = torch.rand(levels.shape, generator=seeded(9), dtype=F64)  # the draws the helper makes
    y = (levels.double() + u) / 128 - 1
    sigma = np.exp(-np.array([0.5, -0.2, 1.0]))
    expected = -(stats.norm.logpdf(y.numpy(), 0.0, sigma).sum(axis=1)) / (3 * math.log(2)) + 7
    from_uint8 = model.bits_per_dim(levels, seeded(9)).detach().numpy()
    from_unit = model.bits_per_dim(levels.double() / 127.5 - 1, seeded(9)).detach().numpy()
    np.testing.assert_allclose(from_uint8, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(from_unit, expected, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- bits per dimension


def test_uniform_density_on_the_cube_scores_8_bits_per_dim():
    # Hand: -(log p + D log(1/128)) / (D ln 2) with log p = -D ln 2 gives 1 + 7 = 8 bits,
    # the 8 bits of a uniform distribution over 256 levels. (Unit density gives the bare 7-bit offset.)
    dims = 12
    x = torch.randint(0, 256, (5, dims), generator=seeded(10), dtype=torch.uint8)
    uniform = bits.dequantized_bits_per_dim(lambda y: torch.full((y.shape[0],), -dims * math.log(2.0), dtype=F64), x, seeded(11), F64)
    unit = bits.dequantized_bits_per_dim(lambda y: torch.zeros(y.shape[0], dtype=F64), x, seeded(11), F64)
    np.testing.assert_allclose(uniform.numpy(), 8.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(unit.numpy(), 7.0, rtol=0, atol=1e-12)


def test_density_constant_on_cells_scores_the_discrete_bits_exactly():
    # A density equal to P(k) / cell-width on level k's cell loses nothing to dequantization, so its
    # dequantized bits/dim equal the discrete -log2 P(k) / D for every draw of u.
    log_p = torch.log_softmax(torch.randn(256, generator=seeded(12), dtype=F64), dim=0)
    x = torch.randint(0, 256, (6, 1, 4, 4), generator=seeded(13))
    x_unit = x.double() / 127.5 - 1

    def log_density(y):
        cell = torch.floor((y + 1) * 128).long()
        return (log_p[cell] - math.log(2 / 256)).sum(dim=(1, 2, 3))

    dequantized = bits.dequantized_bits_per_dim(log_density, x_unit, seeded(14), F64)
    discrete = -log_p[x].sum(dim=(1, 2, 3)).numpy() / (16 * math.log(2))
    np.testing.assert_allclose(dequantized.numpy(), discrete, rtol=0, atol=1e-12)


def test_levels_round_trip_and_digit_levels():
    k = torch.arange(256)
    assert torch.equal(bits.to_levels(bits.levels_to_unit(k)), k)
    digits = torch.arange(17, dtype=torch.float32) / 8 - 1  # scikit-learn's 17 gray levels in [-1, 1]
    expected = [round(v * 255 / 16 + 1e-9) for v in range(17)]  # round((x + 1) * 127.5), halves up
    assert bits.to_levels(digits).tolist() == expected
    with pytest.raises(ConfigError, match="must lie in"):
        bits.to_levels(torch.tensor([1.5]))


# ---------------------------------------------------------------- PixelCNN


def test_pixelcnn_output_never_depends_on_current_or_later_pixels():
    model = PixelCNN((1, 5, 5), channels=8, blocks=2, head=8).double()
    x = torch.rand(1, 1, 5, 5, generator=seeded(15), dtype=F64) * 2 - 1
    x.requires_grad_(True)
    logits = model.network(x)  # continuous inputs, so gradients reach every pixel
    projection = torch.randn(256, generator=seeded(16), dtype=F64)
    for i in range(25):
        row, column = divmod(i, 5)
        (grad,) = torch.autograd.grad(logits[0, :, row, column] @ projection, x, retain_graph=True)
        grad = grad.reshape(25)
        assert torch.all(grad[i:] == 0), f"pixel {i} sees pixels at or after itself"
        if column > 0:
            assert grad[i - 1] != 0  # the left neighbour is seen
        if row > 0:
            assert grad[i - 5] != 0  # the pixel above is seen


def test_pixelcnn_likelihood_with_fixed_logits_is_the_hand_computed_softmax():
    model = PixelCNN((1, 4, 4), channels=8, blocks=1, head=8)
    fixed = torch.randn(256, generator=seeded(17))
    with torch.no_grad():
        model.output.weight.zero_()
        model.output.bias.copy_(fixed)
    x = torch.randint(0, 256, (3, 1, 4, 4), generator=seeded(18))
    log_softmax = fixed.double().numpy() - special.logsumexp(fixed.double().numpy())
    expected = log_softmax[x.numpy()].sum(axis=(1, 2, 3))
    with torch.no_grad():
        got = model.log_likelihood(x / 127.5 - 1).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_pixelcnn_with_uniform_logits_scores_exactly_8_bits_per_dim():
    model = PixelCNN((1, 4, 4), channels=8, blocks=1, head=8).double()
    with torch.no_grad():
        model.output.weight.zero_()
        model.output.bias.zero_()
    x = torch.randint(0, 256, (3, 1, 4, 4), generator=seeded(19), dtype=torch.uint8)
    bpd = model.bits_per_dim(x, seeded(0)).detach()
    np.testing.assert_allclose(bpd.numpy(), 8.0, rtol=0, atol=1e-12)


def test_pixelcnn_logits_of_the_top_rows_do_not_depend_on_the_rows_below():
    # The sampler runs the network on rows 0..r only when it draws row r; that is exact only if the
    # logits of those rows are the same as on whole images (masks hide lower rows; padding is zero).
    model = PixelCNN((1, 5, 6), channels=8, blocks=2, head=8).double()
    randomize(model, 0.6, seed=22)
    levels = torch.randint(0, 256, (3, 1, 5, 6), generator=seeded(23))
    with torch.no_grad():
        full = model.logits(levels)
        for row in range(5):
            top = model.logits(levels[:, :, : row + 1])
            np.testing.assert_allclose(top.numpy(), full[:, :, : row + 1].numpy(), rtol=0, atol=1e-12)
        # ...whereas a change in row 2 does change the logits of rows 2 and below (the check can fail).
        changed = levels.clone()
        changed[:, :, 2] = (changed[:, :, 2] + 128) % 256
        assert not torch.allclose(model.logits(changed)[:, :, 2:], full[:, :, 2:])
    # The sampler (cropped rows, head on one pixel) draws exactly what whole-image logits would give.
    generator, drawn = seeded(24), torch.zeros(4, 1, 5, 6, dtype=torch.int64)
    with torch.no_grad():
        for row in range(5):
            for column in range(6):
                probs = torch.softmax(model.logits(drawn)[:, :, row, column].double(), dim=1)
                drawn[:, 0, row, column] = categorical(probs, generator)
    np.testing.assert_array_equal(bits.to_levels(model.sample(4, seeded(24))).numpy(), drawn.numpy())


def test_pixelcnn_sampler_draws_from_the_likelihood_it_evaluates():
    # A 2x2 model whose conditionals put their mass on levels 0 and 255 and depend on earlier pixels:
    # the 16 outcomes' exact probabilities (one teacher-forced call each) must match sample frequencies.
    model = PixelCNN((1, 2, 2), channels=8, blocks=1, head=8).double()
    randomize(model, 0.6, seed=20)
    with torch.no_grad():
        keep = torch.zeros(256, dtype=torch.bool)
        keep[[0, 255]] = True
        model.output.weight[~keep] = 0.0
        model.output.bias[~keep] = -60.0
        model.output.bias[keep] = 0.0
    outcomes = torch.tensor(list(itertools.product([0, 255], repeat=4)), dtype=torch.uint8).reshape(16, 1, 2, 2)
    with torch.no_grad():
        probs = model.log_likelihood(outcomes).exp().numpy()
    assert abs(probs.sum() - 1) < 1e-9
    assert np.ptp(probs) > 0.05  # the outcomes are far from equally likely
    n = 6000
    samples = model.sample(n, seeded(21))
    assert set(torch.unique(samples).tolist()) <= {-1.0, 1.0}
    codes = ((samples.reshape(n, 4) > 0).long() * torch.tensor([8, 4, 2, 1])).sum(dim=1)
    counts = np.bincount(codes.numpy(), minlength=16)
    # Outcome index in itertools.product order is the same binary code (255 -> 1).
    chi2 = ((counts - n * probs) ** 2 / (n * probs)).sum()
    assert chi2 < stats.chi2.ppf(0.999, df=15)


# ---------------------------------------------------------------- GAN


@pytest.mark.parametrize("loss", ["ns", "hinge"])
def test_gan_generator_step_lowers_its_loss_by_the_first_order_amount(loss):
    model = GAN((1, 8, 8), latent_dim=8, channels=8, loss=loss).double()
    z = model.latents(16, seeded(22))
    discriminator_before = [p.detach().clone() for p in model.discriminator_net.parameters()]
    loss_before = model.generator_loss(z)
    grads = torch.autograd.grad(loss_before, list(model.generator_net.parameters()))
    squared_norm = float(sum(g.pow(2).sum() for g in grads))
    lr = 1e-4
    model.generator_step(z, torch.optim.SGD(model.generator_net.parameters(), lr=lr))
    with torch.no_grad():
        loss_after = float(model.generator_loss(z))
    decrease = float(loss_before.detach()) - loss_after
    assert decrease > 0
    # Gradient descent lowers a smooth loss by lr * |grad|^2 to first order.
    assert abs(decrease / (lr * squared_norm) - 1) < 0.1
    for before, after in zip(discriminator_before, model.discriminator_net.parameters()):
        assert torch.equal(before, after)
        assert after.grad is None  # the generator step sends no gradient into the discriminator


@pytest.mark.parametrize("loss", ["ns", "hinge"])
def test_gan_losses_match_their_formulas(loss):
    model = GAN((3,), latent_dim=4, width=16, depth=2, loss=loss).double()
    real = torch.rand(10, 3, generator=seeded(23), dtype=F64) * 2 - 1
    z = model.latents(10, seeded(24))
    with torch.no_grad():
        fake = model.generator_net(z)
        real_logit = model.discriminator_net(real).numpy()
        fake_logit = model.discriminator_net(fake).numpy()
        d_loss = float(model.discriminator_loss(real, fake))
        g_loss = float(model.generator_loss(z))
    sigmoid = special.expit
    if loss == "ns":  # Goodfellow et al. 2014: D maximizes log D(x) + log(1 - D(G(z))); G maximizes log D(G(z))
        expected_d = np.mean(-np.log(sigmoid(real_logit)) - np.log(1 - sigmoid(fake_logit)))
        expected_g = np.mean(-np.log(sigmoid(fake_logit)))
    else:
        expected_d = np.mean(np.maximum(0, 1 - real_logit) + np.maximum(0, 1 + fake_logit))
        expected_g = -np.mean(fake_logit)
    assert abs(d_loss - expected_d) < 1e-12 and abs(g_loss - expected_g) < 1e-12


def test_gan_spectral_norm_bounds_every_discriminator_layer():
    model = GAN((1, 8, 8), latent_dim=8, channels=8, spectral_norm=True)
    layers = [m for m in model.discriminator_net.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert len(layers) == 3
    with torch.no_grad():
        for layer in layers:  # raw weights far from norm 1, so only the normalization can bring them there
            layer.parametrizations.weight.original.mul_(10.0)
        x = torch.rand(4, 1, 8, 8, generator=seeded(25)) * 2 - 1
        for _ in range(200):  # one power iteration per training-mode forward
            model.discriminator_net(x)
    for layer in layers:
        raw = layer.parametrizations.weight.original.detach().reshape(layer.weight.shape[0], -1)
        used = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        assert float(torch.linalg.matrix_norm(raw, ord=2)) > 3
        assert abs(float(torch.linalg.matrix_norm(used, ord=2)) - 1) < 1e-2


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (2,)])
def test_gan_samples_have_the_item_shape_and_data_range(shape):
    model = GAN(shape, latent_dim=8, channels=8, width=16)
    randomize(model.generator_net, 1.0, seed=26)  # large weights push tanh to saturation
    samples = model.sample(32, seeded(27))
    assert samples.shape == (32, *shape)
    assert float(samples.abs().max()) <= 1.0 and float(samples.abs().max()) > 0.99


# ---------------------------------------------------------------- every family


SMALL = {
    "nice": ((1, 4, 4), dict(couplings=2, width=16, depth=2)),
    "gan": ((1, 8, 8), dict(latent_dim=8, channels=8)),
    "pixelcnn": ((1, 4, 4), dict(channels=8, blocks=1, head=8)),
    "vae": ((1, 4, 4), dict(channels=8, latent_channels=2, iwae_samples=2)),
}


@pytest.mark.parametrize("name", families.names())
def test_train_step_changes_every_group_and_sample_has_the_item_shape(name):
    shape, options = SMALL[name]
    model = families.build(name, shape, **options)
    optimizers = families.build_optimizers(model, lr=1e-3)
    groups = model.optimizer_groups()
    assert set(optimizers) == set(groups) and groups
    before = {group: [p.detach().clone() for p in parameters] for group, parameters in groups.items()}
    x = torch.rand(8, *shape, generator=seeded(28)) * 2 - 1
    losses = model.train_step(x, optimizers, seeded(29))
    assert losses and all(math.isfinite(value) for value in losses.values())
    for group, parameters in groups.items():
        for old, new in zip(before[group], parameters):
            assert not torch.equal(old, new), f"a parameter of group {group!r} did not change"
    samples = model.sample(4, seeded(30))
    assert samples.shape == (4, *shape)
    assert float(samples.min()) >= -1 and float(samples.max()) <= 1


def test_registry_and_option_errors():
    assert families.names() == ["nice", "gan", "pixelcnn", "vae"]
    assert families.build("pixelcnn", (1, 6, 5)).evaluations_per_sample == 30
    assert families.build("nice", (3,)).evaluations_per_sample == 1
    with pytest.raises(ConfigError, match="unknown family 'glow'"):
        families.build("glow", (2,))
    with pytest.raises(ConfigError, match="1-channel"):
        families.build("pixelcnn", (3, 8, 8))
    with pytest.raises(ConfigError, match="unknown GAN loss"):
        families.build("gan", (2,), loss="wasserstein")
    with pytest.raises(ConfigError, match="unknown NICE prior"):
        families.build("nice", (2,), prior="cauchy")
    with pytest.raises(ConfigError, match="family 'nice'"):
        families.build("nice", (2,), bogus=1)
