"""The diffusion transformer (networks/dit.py): patches, positions, adaLN-Zero, QK-norm, RoPE, checkpoints, training."""

import io
import math

import pytest
import torch
from torch import nn

import presets
from edm_space import networks
from edm_space.denoiser import Denoiser
from edm_space.errors import ConfigError
from edm_space.networks.dit import Attention, apply_rope, axial_rope_angles, grid_positions, patchify, sincos_position_embedding, unpatchify
from edm_space.training import TrainConfig, list_checkpoints, load_checkpoint, train
from test_networks import sigmas_for
from test_training import assert_same_training_state

F64 = torch.float64
SMALL = {"depth": 2, "width": 32, "heads": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


def build(item_shape, seed=0, **options):
    torch.manual_seed(seed)
    return networks.build("dit", item_shape, **{**SMALL, **options})


def randomize(net, seed=1, std=0.2):
    """Random values in every weight (the zero-initialized ones included), so every path of F is live."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(std * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def one_hot(classes, num_classes):
    return nn.functional.one_hot(torch.as_tensor(classes), num_classes).float()


# ---------------------------------------------------------------------------
# Patches.


@pytest.mark.parametrize("item_shape, patch", [((1, 8, 8), 2), ((3, 8, 12), 4), ((4, 7, 7), 7), ((4, 7, 7), 1), ((2, 6, 4), 2)])
def test_unpatchify_inverts_patchify_exactly(item_shape, patch):
    x = torch.randn(3, *item_shape)
    tokens = patchify(x, patch)
    c, h, w = item_shape
    assert tokens.shape == (3, (h // patch) * (w // patch), c * patch * patch)
    assert torch.equal(unpatchify(tokens, patch, item_shape), x)


def test_patchify_matches_a_hand_written_loop():
    x = torch.arange(2 * 2 * 4 * 6, dtype=torch.float32).reshape(2, 2, 4, 6)
    p, cols = 2, 3
    tokens = patchify(x, p)
    for b in range(2):
        for r in range(2):
            for c in range(cols):
                for ch in range(2):
                    for a in range(p):
                        for e in range(p):
                            assert tokens[b, r * cols + c, ch * p * p + a * p + e] == x[b, ch, r * p + a, c * p + e]


# ---------------------------------------------------------------------------
# The fixed 2-D sin-cos position embedding: first half the column, second half the row (MAE / DiT / diffusers);
# legacy runs: the row first.


@pytest.mark.parametrize("column_first", [True, False])
def test_sincos_position_embedding_equals_its_closed_form_at_hand_picked_entries(column_first):
    width, rows, cols = 8, 3, 5
    table = sincos_position_embedding(width, rows, cols, column_first)
    assert table.shape == (rows * cols, width)
    # Per axis d = 4 features: sin(pos w0), sin(pos w1), cos(pos w0), cos(pos w1) with w_i = 1/10000^(2i/4): w0 = 1, w1 = 0.01.
    r, c = 2, 3
    token = table[r * cols + c]
    row_part = [math.sin(2.0), math.sin(0.02), math.cos(2.0), math.cos(0.02)]
    col_part = [math.sin(3.0), math.sin(0.03), math.cos(3.0), math.cos(0.03)]
    expected = col_part + row_part if column_first else row_part + col_part
    torch.testing.assert_close(token, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-15)
    # Width 16: per axis d = 8, w_i = 10000^(-i/4) = 1, 0.1, 0.01, 0.001; row 1, column 4 of a 2 x 5 grid.
    token = sincos_position_embedding(16, 2, 5, column_first)[1 * 5 + 4]
    first, second = (4.0, 1.0) if column_first else (1.0, 4.0)
    torch.testing.assert_close(token[1], torch.tensor(math.sin(0.1 * first), dtype=F64), rtol=0, atol=1e-15)
    torch.testing.assert_close(token[7], torch.tensor(math.cos(0.001 * first), dtype=F64), rtol=0, atol=1e-15)
    torch.testing.assert_close(token[8 + 2], torch.tensor(math.sin(0.01 * second), dtype=F64), rtol=0, atol=1e-15)
    torch.testing.assert_close(token[8 + 4], torch.tensor(math.cos(second), dtype=F64), rtol=0, atol=1e-15)


def test_unpatchify_channels_last_reads_token_features_as_p_p_c():
    """DiT's unpatchify (diffusers: reshape (h, w, p, p, C), einsum nhwpqc->nchpwq): feature (a p + e) C + ch of token
    (r, c) is pixel (ch, r p + a, c p + e)."""
    c, h, w, p = 2, 4, 6, 2
    tokens = torch.randn(1, (h // p) * (w // p), c * p * p, dtype=F64)
    x = unpatchify(tokens, p, (c, h, w), channels_last=True)
    for r in range(h // p):
        for col in range(w // p):
            for a in range(p):
                for e in range(p):
                    for ch in range(c):
                        assert x[0, ch, r * p + a, col * p + e] == tokens[0, r * (w // p) + col, (a * p + e) * c + ch]


# ---------------------------------------------------------------------------
# adaLN-Zero: F = 0 at initialisation, so D = c_skip x_hat under every preset.


@pytest.mark.parametrize("options", [{}, {"pos": "rope"}, {"label_dim": 3}, {"qk_norm": False, "patch": 4}])
def test_output_is_exactly_zero_at_init_so_D_is_c_skip_x_for_every_preset(options):
    net = build((1, 8, 8), **options)
    x = torch.randn(5, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    labels = one_hot([0, 1, 2, 0, 1], 3) if "label_dim" in options else None
    assert torch.equal(net(x.float(), torch.linspace(-2, 3, 5), labels), torch.zeros(5, 1, 8, 8))
    for name in presets.names():
        f = presets.get(name)
        sigma = sigmas_for(f)
        c_skip = f.precond(sigma)[0]
        D = Denoiser(net, f)(x, sigma, labels)
        assert torch.equal(D, c_skip.reshape(-1, 1, 1, 1) * x), name


def test_every_block_starts_as_the_identity():
    """adaLN-Zero (DiT Sec. 3.2): the gates start at zero, so each residual branch adds exactly nothing."""
    net = build((1, 8, 8), label_dim=3)
    tokens = torch.randn(2, 16, 32)
    cond = net.conditioning(torch.tensor([-1.0, 2.0]), one_hot([0, 2], 3))
    with torch.no_grad():
        for block in net.blocks:
            assert torch.equal(block(tokens, cond), tokens)


@pytest.mark.parametrize("item_shape, options", [((1, 28, 28), {"patch": 4}), ((4, 7, 7), {"patch": 7}), ((4, 7, 7), {"patch": 1, "pos": "rope"}), ((3, 8, 12), {})])
def test_output_shape_equals_input_shape_for_images_and_latents(item_shape, options):
    net = build(item_shape, **options)
    randomize(net)
    x = torch.randn(2, *item_shape)
    out = net(x, torch.zeros(2))
    assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().max() > 0


def adam_steps(net, steps, labels=None, seed=0):
    """`steps` Adam steps on a fixed regression batch with varied noise levels."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 1, 8, 8, generator=generator)
    target = torch.randn(8, 1, 8, 8, generator=generator)
    c_noise = torch.linspace(-2, 2, 8)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = ((net(x, c_noise, labels) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_noise_level_and_label_act_from_the_second_optimizer_step_on():
    """adaLN-Zero: step 1 only moves the output layer (every other gradient passes through a zero
    weight), so F does not depend on the conditioning yet; step 2 moves the modulation, and it does."""
    net = build((1, 8, 8), label_dim=3)
    labels = one_hot([0, 1, 2, 0, 1, 2, 0, 1], 3)
    probe = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5))

    def outputs():
        with torch.no_grad():
            return {
                "low": net(probe, torch.full((2,), -1.0), one_hot([0, 0], 3)),
                "high": net(probe, torch.full((2,), 1.5), one_hot([0, 0], 3)),
                "class 2": net(probe, torch.full((2,), -1.0), one_hot([2, 2], 3)),
                "null": net(probe, torch.full((2,), -1.0)),
            }

    adam_steps(net, 1, labels)
    first = outputs()
    assert first["low"].abs().max() > 0  # the output layer moved
    for key in ("high", "class 2", "null"):
        assert torch.equal(first[key], first["low"]), key
    adam_steps(net, 1, labels, seed=1)
    second = outputs()
    scale = second["low"].abs().max()
    for key in ("high", "class 2", "null"):
        assert (second[key] - second["low"]).abs().max() > 1e-3 * scale, key


# ---------------------------------------------------------------------------
# QK-norm keeps attention logits bounded (SD3 Sec. 5.3.2).


@pytest.mark.parametrize("rope", [False, True])
def test_qk_norm_bounds_the_attention_logits_and_without_it_they_grow_with_the_input(rope):
    """With RMSNorm gains g, every head's q has ||q|| <= max|g_q| sqrt(d) (RMS 1 per entry before the gain;
    a rotation keeps the norm), so by Cauchy-Schwarz |q.k| / sqrt(d) <= sqrt(d) max|g_q| max|g_k|, whatever
    the input's scale. Without the norm, q and k scale with the input and the logits with its square."""
    width, heads, tokens = 64, 4, 16
    head_dim = width // heads
    torch.manual_seed(0)
    normed, plain = Attention(width, heads, qk_norm=True), Attention(width, heads, qk_norm=False)
    plain.qkv.load_state_dict(normed.qkv.state_dict())
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # learned gains away from 1
        normed.q_norm.weight.copy_(0.5 + 1.5 * torch.rand(head_dim, generator=generator))
        normed.k_norm.weight.copy_(0.5 + 1.5 * torch.rand(head_dim, generator=generator))
    bound = math.sqrt(head_dim) * normed.q_norm.weight.abs().max() * normed.k_norm.weight.abs().max()
    angles = axial_rope_angles(head_dim, *grid_positions(4, 4)).float() if rope else None
    h = torch.randn(2, tokens, width, generator=generator)
    with torch.no_grad():
        for scale in (1.0, 1e3, 1e6):
            assert normed.logits(scale * h, angles).abs().max() <= bound * (1 + 1e-5), scale
        small, large = plain.logits(h, angles).abs().max(), plain.logits(1e3 * h, angles).abs().max()
    assert large > 1e5 * small
    assert large > 1e4 * bound


@pytest.mark.parametrize("qk_norm", [False, True])
def test_the_logits_are_what_the_attention_uses(qk_norm):
    torch.manual_seed(0)
    attention = Attention(32, 2, qk_norm=qk_norm).double()
    h = torch.randn(2, 9, 32, dtype=F64)
    angles = axial_rope_angles(16, *grid_positions(3, 3))
    with torch.no_grad():
        weights = attention.logits(h, angles).softmax(dim=-1)
        _, _, v = attention.queries_keys_values(h, angles)
        by_hand = attention.proj((weights @ v).transpose(1, 2).flatten(2))
        torch.testing.assert_close(attention(h, angles), by_hand, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# Axial RoPE: half the head dims turn with the row, half with the column; logits depend on offsets only.


def rotation(angle):
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s], [s, c]], dtype=F64)


def test_axial_rope_logit_equals_the_closed_form_for_a_four_dim_head():
    """head_dim 4: dims (0, 1) rotate by row * 1, dims (2, 3) by column * 1 (one frequency per axis, 10000^0), so
    logit(i, j) = [q_i[0:2] . R(r_j - r_i) k_j[0:2] + q_i[2:4] . R(c_j - c_i) k_j[2:4]] / sqrt(4)."""
    torch.manual_seed(0)
    attention = Attention(4, 1, qk_norm=False).double()
    rows = torch.tensor([0.0, 3.0, 1.0, 5.0], dtype=F64)
    cols = torch.tensor([2.0, 0.0, 4.0, 1.0], dtype=F64)
    h = torch.randn(1, 4, 4, dtype=F64)
    with torch.no_grad():
        logits = attention.logits(h, axial_rope_angles(4, rows, cols))[0, 0]
        q, k, _ = attention.qkv(h)[0].chunk(3, dim=-1)  # raw projections, before any rotation
    for i in range(4):
        for j in range(4):
            row_part = q[i, 0:2] @ rotation(float(rows[j] - rows[i])) @ k[j, 0:2]
            col_part = q[i, 2:4] @ rotation(float(cols[j] - cols[i])) @ k[j, 2:4]
            torch.testing.assert_close(logits[i, j], (row_part + col_part) / 2, rtol=1e-12, atol=1e-12)


def test_rope_logits_depend_only_on_the_relative_offset():
    torch.manual_seed(0)
    attention = Attention(64, 2, qk_norm=True).double()
    rows, cols = grid_positions(4, 4)
    h = torch.randn(1, 16, 64, dtype=F64)
    with torch.no_grad():
        base = attention.logits(h, axial_rope_angles(32, rows, cols))
        shifted = attention.logits(h, axial_rope_angles(32, rows + 3, cols + 5))
        swapped = attention.logits(h, axial_rope_angles(32, cols, rows))  # other offsets between the same tokens
    torch.testing.assert_close(shifted, base, rtol=0, atol=1e-10)
    assert (swapped - base).abs().max() > 1e-2


def test_rope_rotation_keeps_norms_and_rotates_the_pairs_it_names():
    x = torch.randn(3, 5, 8, dtype=F64)
    angles = torch.randn(5, 4, dtype=F64)
    rotated = apply_rope(x, angles)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1), rtol=1e-12, atol=0)
    # head_dim 8: row pairs (0, 2), (1, 3) by angles[:, 0:2]; column pairs (4, 6), (5, 7) by angles[:, 2:4].
    for first, second, a in [(0, 2, 0), (1, 3, 1), (4, 6, 2), (5, 7, 3)]:
        c, s = angles[:, a].cos(), angles[:, a].sin()
        torch.testing.assert_close(rotated[..., first], c * x[..., first] - s * x[..., second], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rotated[..., second], s * x[..., first] + c * x[..., second], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# Checkpoints, bad options, training.


@pytest.mark.parametrize("options", [{"label_dim": 3}, {"pos": "rope", "qk_norm": False}])
def test_state_dict_round_trip_gives_identical_outputs(options):
    net = build((1, 8, 8), **options)
    randomize(net)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    fresh = build((1, 8, 8), seed=7, **options)
    x = torch.randn(3, 1, 8, 8)
    c_noise = torch.tensor([-1.0, 0.0, 2.0])
    labels = one_hot([0, 2, 1], 3) if "label_dim" in options else None
    with torch.no_grad():
        before = fresh(x, c_noise, labels)
        fresh.load_state_dict(torch.load(buffer, weights_only=True))
        expected, loaded = net(x, c_noise, labels), fresh(x, c_noise, labels)
    assert not torch.equal(before, expected)
    assert torch.equal(loaded, expected)


@pytest.mark.parametrize(
    "item_shape, options, words",
    [
        ((1, 8, 8), {"patch": 3}, ["8x8", "patch size 3"]),
        ((1, 28, 28), {"patch": 8}, ["28x28", "patch size 8"]),
        ((1, 8, 8), {"width": 30, "heads": 4}, ["width 30", "heads 4"]),
        ((1, 8, 8), {"pos": "learned"}, ["learned", "sincos", "rope"]),
        ((1, 8, 8), {"width": 24, "heads": 4, "pos": "rope"}, ["head dim 6"]),
        ((2,), {}, ["[2]", "mlp"]),
    ],
)
def test_bad_options_are_one_line_config_errors(item_shape, options, words):
    with pytest.raises(ConfigError) as error:
        networks.build("dit", item_shape, **options)
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def dit_run(out, steps):
    return TrainConfig(
        preset="edm", data="digits", data_size=64, net="dit", net_options={"depth": 2, "width": 32, "heads": 2},
        conditional=True, steps=steps, batch=8, warmup_images=16, checkpoint_every=2, log_every=1, out=str(out),
    )


def test_training_a_dit_on_digits_resumes_bit_identically(tmp_path):
    train(dit_run(tmp_path / "long", 4), progress=False)
    first = train(dit_run(tmp_path / "short", 2), progress=False)
    assert first["start_step"] == 0
    after_two = load_checkpoint(list_checkpoints(str(tmp_path / "short"))[-1][1])
    assert after_two["model"]["out.weight"].abs().max() > 0  # it trained
    resumed = train(dit_run(tmp_path / "short", 4), progress=False)
    assert resumed["start_step"] == 2  # resumed, not restarted
    long_state = load_checkpoint(list_checkpoints(str(tmp_path / "long"))[-1][1])
    short_state = load_checkpoint(list_checkpoints(str(tmp_path / "short"))[-1][1])
    assert short_state["step"] == 4
    assert_same_training_state(long_state, short_state)
    assert not torch.equal(short_state["model"]["out.weight"], after_two["model"]["out.weight"])
    assert "label.bias" in short_state["model"]


def test_without_adaln_zero_the_modulation_and_output_layers_get_xavier_and_F_is_live():
    net = build((1, 8, 8), adaln_zero=False)
    for layer in [*(block.modulation for block in net.blocks), net.out_modulation, net.out]:
        fan_out, fan_in = layer.weight.shape
        bound = math.sqrt(6.0 / (fan_in + fan_out))  # Xavier-uniform (Glorot & Bengio 2010): U(-b, b)
        w = layer.weight.detach()
        assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.9 * bound
        assert abs(float(w.pow(2).mean()) / (bound ** 2 / 3) - 1) < 0.1  # variance b^2 / 3
        assert torch.equal(layer.bias.detach(), torch.zeros_like(layer.bias))
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert float(net(x, torch.zeros(3)).abs().max()) > 0



@pytest.mark.parametrize("value", ["no", 0, None])
def test_adaln_zero_must_be_a_boolean(value):
    with pytest.raises(ConfigError, match="adaln_zero"):
        build((1, 8, 8), adaln_zero=value)
