"""The GAN's remedies against collapse (R1, two learning rates, minibatch standard deviation, bounds, resume), each
checked against an independent computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edm_space import families
from edm_space.errors import ConfigError
from edm_space.families.gan import GAN, minibatch_std
from edm_space.model_training import ModelConfig, load_model, train_model
from edm_space.rundir import list_checkpoints, load_checkpoint, save_checkpoint

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape", [(3,), (1, 4, 4)])
def test_r1_penalty_equals_finite_difference_gradient_norm(shape):
    gamma = 2.5
    model = GAN(shape, latent_dim=4, channels=4, width=16, depth=2, r1=gamma).double()
    real = torch.rand(5, *shape, generator=seeded(1), dtype=F64) * 2 - 1
    penalty = float(model.r1_penalty(real).detach())
    # Central differences of the logit along every input coordinate, item by item (the logit of an item depends on it alone).
    h = 1e-6
    flat = real.reshape(5, -1)
    squared = np.zeros(5)
    with torch.no_grad():
        for j in range(flat.shape[1]):
            step = torch.zeros_like(flat)
            step[:, j] = h
            up = model.discriminator_net((flat + step).reshape(real.shape))
            down = model.discriminator_net((flat - step).reshape(real.shape))
            squared += (((up - down) / (2 * h)).numpy()) ** 2
    expected = gamma / 2 * squared.mean()  # Mescheder et al. 2018, eq. 9
    assert penalty > 1e-6
    assert abs(penalty / expected - 1) < 1e-6


def test_r1_penalty_enters_the_discriminator_step():
    real = torch.rand(6, 3, generator=seeded(2), dtype=F64) * 2 - 1
    model = GAN((3,), latent_dim=4, width=16, depth=2, r1=3.0, lr_ratio=1.0).double()
    z = model.latents(6, seeded(3))
    fake = model.generator_net(z).detach()
    params = list(model.discriminator_net.parameters())
    plain = torch.autograd.grad(model.discriminator_loss(real, fake), params)
    # the last bias does not reach grad_x l(x): no gradient from the penalty there
    penalty = [torch.zeros_like(p) if g is None else g for p, g in zip(params, torch.autograd.grad(model.r1_penalty(real), params, allow_unused=True))]
    assert max(float(g.abs().max()) for g in penalty) > 1e-6
    optimizer = torch.optim.SGD(params, lr=0.1)
    before = [p.detach().clone() for p in params]
    model.discriminator_step(real, z, optimizer)
    for b, p, g1, g2 in zip(before, params, plain, penalty):  # SGD: the step is -lr times the sum of both gradients
        assert torch.allclose(p.detach(), b - 0.1 * (g1 + g2), atol=1e-12, rtol=0)


def test_two_learning_rates_scale_the_discriminator_step_only():
    lr, ratio = 1e-3, 4.0
    model = GAN((1, 8, 8), latent_dim=8, channels=8, lr_ratio=ratio).double()
    optimizers = families.build_optimizers(model, lr)
    before = {name: [p.detach().clone() for p in params] for name, params in model.optimizer_groups().items()}
    x = torch.rand(16, 1, 8, 8, generator=seeded(4), dtype=F64) * 2 - 1
    model.train_step(x, optimizers, seeded(5))
    # Adam's first step moves every weight with a clear gradient by lr * g / (|g| + eps), i.e. by lr itself.
    for name, expected in (("discriminator", lr * ratio), ("generator", lr)):
        moves = torch.cat([(p.detach() - b).abs().flatten() for p, b in zip(model.optimizer_groups()[name], before[name])])
        assert abs(float(moves.max()) / expected - 1) < 1e-3
    assert optimizers["discriminator"].param_groups[0]["lr"] == lr * ratio
    assert optimizers["generator"].param_groups[0]["lr"] == lr
    model.train_step(x, optimizers, seeded(6))  # the rate does not compound from step to step
    assert optimizers["discriminator"].param_groups[0]["lr"] == lr * ratio


@pytest.mark.parametrize("batch, group", [(8, 4), (6, 4), (5, 8)])
def test_minibatch_std_feature_equals_hand_computation(batch, group):
    h = torch.randn(batch, 3, 2, 2, generator=seeded(7), dtype=F64)
    out = minibatch_std(h, group).numpy()
    assert out.shape == (batch, 4, 2, 2)
    assert np.array_equal(out[:, :3], h.numpy())
    size = int(np.gcd(batch, group))  # groups of gcd(group, batch) consecutive items
    a = h.numpy()
    for start in range(0, batch, size):
        block = a[start:start + size]
        expected = np.sqrt(((block - block.mean(axis=0)) ** 2).mean(axis=0) + 1e-8).mean()
        assert np.allclose(out[start:start + size, 3], expected, atol=1e-12, rtol=0)


def test_minibatch_std_makes_the_logit_depend_on_the_batch():
    model = GAN((1, 8, 8), latent_dim=8, channels=8, minibatch_std=4).double()
    x = torch.rand(4, 1, 8, 8, generator=seeded(8), dtype=F64) * 2 - 1
    with torch.no_grad():
        logits = model.discriminator_net(x)
        other = x.clone()
        other[3] = -other[3]
        changed = model.discriminator_net(other)
    assert not torch.allclose(logits[:3], changed[:3])  # items 0-2 unchanged, but their group's spread changed
    plain = GAN((1, 8, 8), latent_dim=8, channels=8).double()
    with torch.no_grad():
        assert torch.equal(plain.discriminator_net(x)[:3], plain.discriminator_net(other)[:3])


@pytest.mark.parametrize("option, value", [("r1", -1.0), ("r1", float("nan")), ("r1", True), ("lr_ratio", 0.0), ("lr_ratio", 1e9),
                                           ("minibatch_std", 1), ("minibatch_std", -2), ("minibatch_std", 2.5)])
def test_remedy_options_out_of_bounds_are_refused(option, value):
    with pytest.raises(ConfigError, match=option):
        families.build("gan", (1, 8, 8), **{option: value})


def test_gan_resume_with_every_remedy_is_bit_exact(tmp_path):
    options = {"latent_dim": 4, "channels": 4, "loss": "hinge", "spectral_norm": True, "r1": 1.0, "lr_ratio": 2.0, "minibatch_std": 4}

    def config(out, steps):
        return ModelConfig(kind="family", name="gan", options=options, data="digits", data_size=64, steps=steps, batch=8,
                           checkpoint_every=2, keep_checkpoints=2, log_every=1, out=str(out))

    quiet = dict(progress=False, device="cpu", echo=lambda line: None)
    train_model(config(tmp_path / "straight", 4), **quiet)
    train_model(config(tmp_path / "resumed", 2), **quiet)
    train_model(config(tmp_path / "resumed", 4), **quiet)
    a = load_checkpoint(list_checkpoints(str(tmp_path / "straight"))[-1][1])
    b = load_checkpoint(list_checkpoints(str(tmp_path / "resumed"))[-1][1])
    assert a["step"] == b["step"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert b["optimizers"]["discriminator"]["param_groups"][0]["lr"] == 2.0 * b["optimizers"]["generator"]["param_groups"][0]["lr"]
    middle = load_checkpoint(list_checkpoints(str(tmp_path / "straight"))[0][1])
    assert not all(torch.equal(middle["model"][k], a["model"][k]) for k in a["model"])


def test_default_gan_trains_its_discriminator_at_eight_times_the_rate():
    model = families.build("gan", (1, 8, 8), latent_dim=4, channels=4)
    optimizers = families.build_optimizers(model, 2e-4)
    x = torch.rand(8, 1, 8, 8, generator=seeded(9)) * 2 - 1
    model.train_step(x, optimizers, seeded(10))
    assert optimizers["discriminator"].param_groups[0]["lr"] == pytest.approx(8 * 2e-4, rel=1e-12)
    assert optimizers["generator"].param_groups[0]["lr"] == 2e-4


def test_a_gan_run_without_a_recorded_r1_resumes_and_loads_without_the_penalty(tmp_path):
    """r1's default became 1 after runs were trained with 0: a new run records r1 = 1, and a run whose config.json
    and checkpoints do not record it (as those runs) resumes with r1 = 0, so it ends where an r1 = 0 run ends."""
    quiet = dict(progress=False, device="cpu", echo=lambda line: None)

    def config(out, steps, **extra):
        return ModelConfig(kind="family", name="gan", options={"latent_dim": 4, "channels": 4, **extra}, data="digits", data_size=64,
                           steps=steps, batch=8, checkpoint_every=2, keep_checkpoints=2, log_every=1, out=str(out))

    old = tmp_path / "old"
    train_model(config(old, 2, r1=0.0), **quiet)  # as the runs trained before the default changed
    config_path = old / "config.json"
    payload = json.loads(config_path.read_text())
    del payload["options"]["r1"]  # ... which do not record r1
    config_path.write_text(json.dumps(payload))
    path = list_checkpoints(str(old))[-1][1]
    state = load_checkpoint(path)
    state["config"] = json.dumps(payload)
    save_checkpoint(path, state)
    assert load_model(str(old))[0].r1 == 0.0
    train_model(config(old, 4), **quiet)  # resumed with the options as given, r1 not among them
    resumed = load_checkpoint(list_checkpoints(str(old))[-1][1])["model"]
    for extra, same in (({"r1": 0.0}, True), ({}, False)):
        out = tmp_path / f"straight{len(extra)}"
        train_model(config(out, 4, **extra), **quiet)
        straight = load_checkpoint(list_checkpoints(str(out))[-1][1])["model"]
        assert all(torch.equal(straight[k], resumed[k]) for k in straight) == same, extra
    assert json.loads((tmp_path / "straight0" / "config.json").read_text())["options"]["r1"] == 1.0  # a new run records it
    assert load_model(str(tmp_path / "straight0"))[0].r1 == 1.0
