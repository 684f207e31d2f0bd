"""Raw networks F (mlp, unet, dit), their label contract, the noise embedding, and the Denoiser D = c_skip x + c_out F(c_in x, c_noise)."""

import math

import pytest
import torch
from torch import nn

import presets
from edm_space import networks
from edm_space.denoiser import Denoiser
from edm_space.errors import ConfigError
from edm_space.networks.embedding import NoiseEmbedding

F64 = torch.float64
MLP_OPTIONS = {"width": 32, "depth": 2}
UNET_OPTIONS = {"channels": 8, "channel_mult": [1, 2], "blocks_per_level": 1}
DIT_OPTIONS = {"depth": 2, "width": 32, "heads": 2}
SMALL_OPTIONS = {"mlp": MLP_OPTIONS, "unet": UNET_OPTIONS, "dit": DIT_OPTIONS}


pytestmark = pytest.mark.usefixtures("one_thread")


def build(name, item_shape, **options):
    torch.manual_seed(0)
    return networks.build(name, item_shape, **{**SMALL_OPTIONS[name], **options})


def perturb_output_layer(net, seed=1):
    """Give the zero-initialized output layer random weights, so that F is no longer 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.out.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=generator))


# ---------------------------------------------------------------------------
# Shapes and the zero-initialized output.


@pytest.mark.parametrize(
    "name, item_shape",
    [("mlp", (2,)), ("mlp", (1, 8, 8)), ("mlp", (3, 5)), ("unet", (1, 8, 8)), ("unet", (3, 8, 12))],
)
def test_output_shape_equals_input_shape(name, item_shape):
    net = build(name, item_shape)
    perturb_output_layer(net)
    x = torch.randn(5, *item_shape)
    out = net(x, torch.linspace(-1, 1, 5))
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    assert torch.isfinite(out).all()
    assert out.abs().max() > 0  # the perturbed output layer makes F non-trivial


@pytest.mark.parametrize("name, item_shape", [("mlp", (2,)), ("unet", (1, 8, 8))])
@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_zero_initialized_output_makes_D_equal_c_skip_x_at_init(name, item_shape, sigma_data):
    net = build(name, item_shape)
    x_hat = torch.randn(6, *item_shape, dtype=F64)
    sigma = torch.tensor([0.002, 0.05, 0.3, 1.0, 7.0, 80.0], dtype=F64)
    assert torch.equal(net(x_hat.float(), sigma.log().float() / 4), torch.zeros(6, *item_shape))
    D = Denoiser(net, presets.get("edm", sigma_data=sigma_data))
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)  # EDM Table 1, closed form
    expected = c_skip.reshape(-1, *[1] * len(item_shape)) * x_hat
    torch.testing.assert_close(D(x_hat, sigma), expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("name, item_shape", [("mlp", (2,)), ("unet", (1, 8, 8))])
def test_label_conditioning_changes_the_output_once_the_label_layer_is_nonzero(name, item_shape):
    net = build(name, item_shape, label_dim=10)
    perturb_output_layer(net)
    x = torch.randn(4, *item_shape)
    c_noise = torch.full((4,), 0.2)
    three = nn.functional.one_hot(torch.full((4,), 3), 10).float()
    seven = nn.functional.one_hot(torch.full((4,), 7), 10).float()
    zeros = torch.zeros(4, 10)
    with torch.no_grad():
        out3, out7, out_none, out_zero = net(x, c_noise, three), net(x, c_noise, seven), net(x, c_noise), net(x, c_noise, zeros)
        assert (out3 - out7).abs().max() > 1e-3
        # labels=None is read as all-zero rows, the null label: exactly the same output.
        assert torch.equal(out_zero, out_none)
        # The null label embeds as the bias alone, a class as its column plus the bias.
        assert (out_zero - out3).abs().max() > 1e-3
        # With the label weights at zero, every class embeds as the null label and labels cannot matter.
        net.label.weight.zero_()
        torch.testing.assert_close(net(x, c_noise, three), net(x, c_noise, seven), rtol=0, atol=0)


# Steps until a gradient reaches the conditioning: 1 behind a zero output layer (mlp, unet); 2 behind
# adaLN-Zero, whose first step only moves the output layer (dit).
STEPS_UNTIL_LABELS_ACT = {"mlp": 1, "unet": 1, "dit": 2}


@pytest.mark.parametrize("name, item_shape", [("mlp", (2,)), ("unet", (1, 8, 8)), ("dit", (1, 8, 8))])
def test_null_label_is_learned_and_differs_from_every_class_after_training_on_mixed_labels(name, item_shape):
    classes = 4
    net = build(name, item_shape, label_dim=classes)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, *item_shape, generator=generator)
    target = torch.randn(8, *item_shape, generator=generator)
    c_noise = torch.linspace(-1, 1, 8)
    labels = nn.functional.one_hot(torch.arange(8) % classes, classes).float()
    labels[::2] = 0  # half the batch carries the null label
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    null_at_init = net.label(None, 1).detach().clone()

    def step():
        loss = ((net(x, c_noise, labels) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    probe = torch.randn(3, *item_shape, generator=generator)
    probe_noise = torch.tensor([-0.5, 0.1, 0.8])
    for _ in range(STEPS_UNTIL_LABELS_ACT[name]):
        step()
    with torch.no_grad():
        null = net(probe, probe_noise, torch.zeros(3, classes))
        assert torch.equal(net(probe, probe_noise), null)  # labels=None is the all-zero (null) row, exactly
        for k in range(classes):
            out = net(probe, probe_noise, nn.functional.one_hot(torch.full((3,), k), classes).float())
            assert (out - null).abs().max() > 1e-3 * null.abs().max(), k
    # The null embedding is a trained weight: once gradients reach the conditioning, it moves.
    step()
    assert (net.label(None, 1) - null_at_init).abs().max() > 1e-3


@pytest.mark.parametrize("name, item_shape", [("mlp", (2,)), ("unet", (1, 8, 8)), ("dit", (1, 8, 8))])
def test_unconditional_networks_have_no_label_weights(name, item_shape):
    net = build(name, item_shape)
    assert net.label is None
    assert not any(key.startswith("label.") for key in net.state_dict())


@pytest.mark.parametrize(
    "item_shape, channel_mult",
    [((1, 7, 7), [1, 2]), ((1, 8, 8), [1, 2, 2, 2, 2]), ((3, 12, 6), [1, 2, 2, 2])],
)
def test_unet_rejects_a_size_not_divisible_by_two_to_the_levels_minus_one(item_shape, channel_mult):
    with pytest.raises(ConfigError) as error:
        build("unet", item_shape, channel_mult=channel_mult)
    message = str(error.value)
    assert "\n" not in message
    assert f"{item_shape[1]}x{item_shape[2]}" in message
    assert f"2^{len(channel_mult) - 1}" in message


def test_unet_accepts_the_largest_divisible_depth():
    net = build("unet", (1, 8, 8), channel_mult=[1, 2, 2, 2])  # 8 = 2^3
    assert net(torch.randn(2, 1, 8, 8), torch.zeros(2)).shape == (2, 1, 8, 8)


def test_unet_rejects_vector_items_and_unknown_networks_by_name():
    with pytest.raises(ConfigError) as error:
        networks.build("unet", (2,), **UNET_OPTIONS)
    assert "[2]" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ConfigError) as error:
        networks.build("transformer", (2,))
    assert "transformer" in str(error.value) and "mlp" in str(error.value) and "unet" in str(error.value)
    with pytest.raises(ConfigError) as error:
        networks.build("mlp", (2,), widht=3)
    assert "widht" in str(error.value)


# ---------------------------------------------------------------------------
# The noise embedding.


@pytest.mark.parametrize(
    "a, b",
    [
        (0.1, 0.2),  # flow / sd3: t in [0, 1]
        (0.0, 0.01),
        (500.0, 501.0),  # ddpm: the 0-based timestep index
        (998.0, 999.0),
        (math.log(0.002) / 4, math.log(0.0021) / 4),  # edm: ln(sigma) / 4
        (math.log(80.0) / 4, math.log(84.0) / 4),
        (math.log(0.02 / 2), math.log(0.021 / 2)),  # ve: ln(sigma / 2)
    ],
)
def test_noise_embedding_distinguishes_nearby_c_noise_in_every_presets_range(a, b):
    torch.manual_seed(0)
    embed = NoiseEmbedding(64)
    with torch.no_grad():
        ea, eb = embed(torch.tensor([a])), embed(torch.tensor([b]))
    scale = 0.5 * (ea.norm() + eb.norm())
    assert (ea - eb).norm() > 0.02 * scale, (a, b, float((ea - eb).norm() / scale))


@pytest.mark.parametrize("name", ["mlp", "unet", "dit"])
def test_noise_max_freq_sets_the_top_frequency_and_the_default_is_the_trained_runs_band(name):
    item_shape = (4,) if name == "mlp" else (1, 8, 8)
    default, low = build(name, item_shape), build(name, item_shape, noise_max_freq=1.0)
    assert float(default.embed.freqs.max()) == pytest.approx(100.0) and float(default.embed.freqs.min()) == pytest.approx(1e-3)
    assert float(low.embed.freqs.max()) == pytest.approx(1.0) and float(low.embed.freqs.min()) == pytest.approx(1e-3)
    # the frequencies stay geometrically spaced: equal ratios between neighbours
    ratios = low.embed.freqs[1:] / low.embed.freqs[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, 1000.0 ** (1 / 31)))


@pytest.mark.parametrize("value", [0, 1e-3, -1.0, float("nan"), "high"])
def test_noise_max_freq_at_or_below_the_lowest_frequency_is_refused_in_one_line(value):
    with pytest.raises(ConfigError) as error:
        build("unet", (1, 8, 8), noise_max_freq=value)
    message = str(error.value)
    assert "noise_max_freq" in message and "\n" not in message


def test_vp_c_noise_turns_the_default_bands_top_frequency_by_radians_per_permille_of_sigma():
    """Why VP and DDPM runs want noise_max_freq = 1: their c_noise = 999 t (EDM Table 1) moves by about
    0.1 when sigma = 50 changes by 0.1 %; at 100 rad per unit that is radians of phase (aliasing), at 1 a
    fraction of one."""
    formulation = presets.get("vp")
    c_noise = [float(formulation.precond(torch.tensor(s, dtype=F64))[3]) for s in (50.0, 50.05)]
    step = abs(c_noise[1] - c_noise[0])
    # independent: c_noise = 999 t with t from VP's sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) (Song et al. 2021, eq. 33)
    def t_of(sigma, beta_d=19.9, beta_min=0.1):
        return (math.sqrt(beta_min ** 2 + 2 * beta_d * math.log(1 + sigma ** 2)) - beta_min) / beta_d
    assert step == pytest.approx(999 * (t_of(50.05) - t_of(50.0)), rel=1e-6)
    assert 100.0 * step > 6.0 and 1.0 * step < 0.2


@pytest.mark.parametrize("channels, minimum, groups", [(16, 1, 16), (32, 1, 32), (48, 1, 16), (4, 1, 1),
                                                      (16, 4, 4), (32, 4, 8), (64, 4, 16), (128, 4, 32), (256, 4, 32),
                                                      (48, 4, 8), (16, 32, 1)])
def test_group_norm_keeps_at_least_min_channels_per_group(channels, minimum, groups):
    from edm_space.networks.unet import group_norm

    norm = group_norm(channels, minimum)
    assert norm.num_groups == groups and channels % groups == 0
    if minimum == 4 and channels >= 128:  # NVlabs/edm: min(32, channels // 4) groups
        assert groups == min(32, channels // 4)


def test_unet_min_channels_per_group_reaches_every_norm_and_is_bounded():
    net = build("unet", (1, 8, 8))  # the default: 4, as EDM's networks
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_channels // m.num_groups >= 4 for m in norms)
    legacy = [m for m in build("unet", (1, 8, 8), min_channels_per_group=1).modules() if isinstance(m, nn.GroupNorm)]  # runs before
    assert all(m.num_groups == (math.gcd(m.num_channels, 32) if m.num_channels >= 8 else 1) for m in legacy)
    with pytest.raises(ConfigError) as error:
        build("unet", (1, 8, 8), min_channels_per_group=0)
    assert "min_channels_per_group" in str(error.value)


def test_noise_embedding_is_deterministic_per_value_and_batched_consistently():
    torch.manual_seed(0)
    embed = NoiseEmbedding(16)
    c = torch.tensor([0.1, 0.2, 500.0, 501.0])
    with torch.no_grad():
        batched = embed(c)
        singles = torch.cat([embed(c[i : i + 1]) for i in range(4)])
    assert batched.shape == (4, 16)
    torch.testing.assert_close(batched, singles, rtol=1e-6, atol=1e-6)
    assert (batched[0] - batched[2]).abs().max() > 1e-3


# ---------------------------------------------------------------------------
# The Denoiser against its formula, for every preset.


class TestFunction(nn.Module):
    """A deterministic stand-in for F (not a trained net) that records what it was called with."""

    __test__ = False

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros((), dtype=dtype))  # gives the "network" its dtype
        self.calls = []

    def forward(self, x, c_noise, labels=None):
        self.calls.append({"x": x.detach().clone(), "c_noise": c_noise.detach().clone(), "labels": labels})
        c = c_noise.reshape(-1, *[1] * (x.ndim - 1))
        return torch.sin(3 * x) + 0.001 * c * torch.cos(x) + self.anchor


def reference_D(f, x_hat, sigma):
    """D from presets.get(name).precond evaluated directly, in float64."""
    c_skip, c_out, c_in, c_noise = f.precond(sigma)
    shape = (-1,) + (1,) * (x_hat.ndim - 1)
    x_in = c_in.reshape(shape) * x_hat
    F = torch.sin(3 * x_in) + 0.001 * c_noise.reshape(shape) * torch.cos(x_in)
    return c_skip.reshape(shape) * x_hat + c_out.reshape(shape) * F, c_in, c_noise


def sigmas_for(f):
    lo = max(f.sigma_min, f.support[0], 1e-3)
    hi = min(f.sigma_max, f.support[1], 200.0)
    return torch.tensor([lo, 0.1, 0.7, 3.0, hi], dtype=F64)


@pytest.mark.parametrize("name", presets.names())
def test_denoiser_equals_its_formula_in_float64(name):
    f = presets.get(name)
    sigma = sigmas_for(f)
    x_hat = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(2)) * (1 + sigma[:, None])
    F = TestFunction(F64)
    out = Denoiser(F, f)(x_hat, sigma)
    expected, c_in, c_noise = reference_D(f, x_hat, sigma)
    assert out.dtype == F64
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    (call,) = F.calls
    assert call["x"].dtype == F64 and call["c_noise"].dtype == F64
    torch.testing.assert_close(call["x"], c_in[:, None] * x_hat, rtol=1e-14, atol=0)
    torch.testing.assert_close(call["c_noise"], c_noise, rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", presets.names())
def test_float32_network_gets_float32_inputs_and_float64_in_gives_float64_out(name):
    f = presets.get(name)
    sigma = sigmas_for(f)
    x_hat = torch.randn(5, 1, 2, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    F = TestFunction(torch.float32)
    out = Denoiser(F, f)(x_hat, sigma)
    assert out.dtype == F64
    (call,) = F.calls
    assert call["x"].dtype == torch.float32 and call["c_noise"].dtype == torch.float32
    expected, _, _ = reference_D(f, x_hat, sigma)
    _, c_out, _, c_noise = f.precond(sigma)
    scale = 1 + x_hat.abs() + (c_out.abs() * (1 + 0.001 * c_noise.abs())).reshape(-1, 1, 1, 1)
    assert ((out - expected).abs() / scale).max() < 1e-5


@pytest.mark.parametrize("name", ["edm", "vp", "flow", "ddpm"])
def test_denoiser_accepts_scalar_sigma_and_keeps_float32_inputs_float32(name):
    f = presets.get(name)
    x_hat = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    per_example = Denoiser(TestFunction(F64), f)(x_hat, torch.full((4,), 0.7, dtype=F64))
    for scalar in (0.7, torch.tensor(0.7, dtype=F64)):
        torch.testing.assert_close(Denoiser(TestFunction(F64), f)(x_hat, scalar), per_example, rtol=0, atol=0)
    out32 = Denoiser(TestFunction(torch.float32), f)(x_hat.float(), torch.full((4,), 0.7, dtype=F64))
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), per_example, rtol=1e-5, atol=1e-5)


def test_denoiser_passes_labels_to_the_network():
    F = TestFunction(F64)
    labels = torch.eye(3)[[0, 2]]
    Denoiser(F, presets.get("edm"))(torch.zeros(2, 2, dtype=F64), 1.0, labels)
    assert F.calls[0]["labels"] is labels
    stored = torch.eye(3)[[1, 1]]
    F2 = TestFunction(F64)
    Denoiser(F2, presets.get("edm"), labels=stored)(torch.zeros(2, 2, dtype=F64), 1.0)
    assert F2.calls[0]["labels"] is stored
