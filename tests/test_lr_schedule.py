"""Learning-rate schedules (EDM2 eq. 16, cosine) and the optimizers (Adam, AdamW) of a training run."""

import json
import math

import pytest
import torch
from torch import nn

from edm_space.errors import ConfigError
from edm_space.lr_schedule import build_optimizer, learning_rate
from edm_space.training import TrainConfig, read_log, train
from helpers_cli import TINY_TRAIN, cli_error


pytestmark = pytest.mark.usefixtures("one_thread")


def edm2_learning_rate(images, batch, ref_lr, ref_batches, rampup_images):
    """EDM2's training_loop.learning_rate_schedule, written out from the paper (eq. 16 with a linear ramp-up)."""
    lr = ref_lr
    if ref_batches > 0:
        lr /= math.sqrt(max(images / (ref_batches * batch), 1))
    if rampup_images > 0:
        lr *= min(images / rampup_images, 1)
    return lr


def test_inverse_sqrt_is_edm2s_schedule():
    batch, ref_batches, rampup = 64, 70, 2_000
    for images in (64, 1_000, 4_480, 4_544, 50_000, 10**7):
        ours = learning_rate(0.01, "inverse-sqrt", images, warmup_images=rampup, ref_images=ref_batches * batch)
        assert ours == pytest.approx(edm2_learning_rate(images, batch, 0.01, ref_batches, rampup), rel=1e-14)
    assert learning_rate(0.01, "inverse-sqrt", 4 * 4480, ref_images=4480) == pytest.approx(0.005)  # 1/sqrt(4)


def test_cosine_and_constant():
    assert learning_rate(0.1, "constant", 5_000, warmup_images=1_000) == 0.1
    assert learning_rate(0.1, "constant", 500, warmup_images=1_000) == pytest.approx(0.05)
    assert learning_rate(0.1, "cosine", 2_500, run_images=10_000) == pytest.approx(0.1 * (1 + math.cos(math.pi / 4)) / 2)
    assert learning_rate(0.1, "cosine", 5_000, run_images=10_000) == pytest.approx(0.05)
    assert learning_rate(0.1, "cosine", 10_000, run_images=10_000) == pytest.approx(0.0, abs=1e-15)


def test_a_run_logs_the_scheduled_rate_and_records_the_schedule(tmp_path):
    config = TrainConfig(data="8gaussians", data_size=256, net_options={"width": 16, "depth": 1}, steps=40, batch=16,
                         warmup_images=64, lr=0.01, lr_schedule="inverse-sqrt", lr_ref_images=160, log_every=5,
                         out=str(tmp_path / "run"), optimizer="adamw", weight_decay=0.01)
    train(config, progress=False)
    for entry in read_log(str(tmp_path / "run")):
        images = entry["step"] * 16
        expected = 0.01 * min(images / 64, 1) / math.sqrt(max(images / 160, 1))
        assert entry["lr"] == pytest.approx(expected, rel=1e-12)
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (stored["lr_schedule"], stored["lr_ref_images"], stored["optimizer"], stored["weight_decay"]) == ("inverse-sqrt", 160, "adamw", 0.01)


def manual_adamw(theta, grads, lr, decay, betas=(0.9, 0.999), eps=1e-8):
    """AdamW (Loshchilov & Hutter 2019, Alg. 2 with torch's bias correction), in float64 by hand."""
    m = torch.zeros_like(theta)
    v = torch.zeros_like(theta)
    for t, g in enumerate(grads, start=1):
        theta = theta * (1 - lr * decay)  # decoupled weight decay
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        theta = theta - lr * m_hat / (v_hat.sqrt() + eps)
    return theta


@pytest.mark.parametrize("kind, decoupled", [("adamw", True), ("adam", False)])
def test_the_optimizers_follow_their_update_rules(kind, decoupled):
    generator = torch.Generator().manual_seed(1)
    net = nn.Linear(4, 3)
    start = net.weight.detach().double().clone()
    grads = [torch.randn(3, 4, generator=generator) for _ in range(5)]
    config = TrainConfig(lr=0.01, optimizer=kind, weight_decay=0.1)
    optimizer = build_optimizer(net, config)
    for g in grads:
        net.weight.grad = g.clone()
        net.bias.grad = torch.zeros(3)
        optimizer.step()
    if decoupled:
        expected = manual_adamw(start, [g.double() for g in grads], 0.01, 0.1)
    else:  # Adam's weight decay is an L2 term in the gradient: run the same rule without decay on g + decay * theta
        theta, m, v = start.clone(), torch.zeros_like(start), torch.zeros_like(start)
        for t, g in enumerate(grads, start=1):
            g = g.double() + 0.1 * theta
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
            theta = theta - 0.01 * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
        expected = theta
    assert torch.allclose(net.weight.detach().double(), expected, rtol=0, atol=1e-6)
    assert not torch.allclose(expected, manual_adamw(start, [g.double() for g in grads], 0.01, 0.0), atol=1e-6)  # the decay matters


@pytest.mark.parametrize("argv, names", [
    (["--lr-schedule", "inverse-sqrt"], ["--lr-ref-images"]),
    (["--lr-schedule", "linear"], ["--lr-schedule", "linear"]),
    (["--weight-decay", "-1"], ["weight_decay", "-1"]),
])
def test_bad_schedule_settings_are_refused_in_one_line(tmp_path, capsys, argv, names):
    cli_error(["train", *TINY_TRAIN, *argv, "--out", str(tmp_path / "run")], capsys, names, roots=[tmp_path])
