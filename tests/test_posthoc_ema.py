"""Post-hoc EMA (EDM2 Sec. 3, App. C): the power-function profile, its tracking, snapshots and reconstruction."""

import os

import numpy as np
import pytest
import torch
from scipy import integrate
from torch import nn

from conftest import one_torch_thread
from edm_space import posthoc_ema
from edm_space.errors import ConfigError
from edm_space.posthoc_ema import (
    PowerEMA, gamma_to_std, list_snapshots, profile_inner_products, reconstruct, std_to_gamma, write_snapshot,
)
from edm_space.training import TrainConfig, list_checkpoints, load_checkpoint, train


pytestmark = pytest.mark.usefixtures("one_thread")


class Weights(nn.Module):
    """A 'network' that is one parameter vector, set by hand at each step."""

    def __init__(self, size):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(size, dtype=torch.float64))


def test_the_exponents_of_edm2s_two_profiles():
    # EDM2 Sec. 3.1: sigma_rel = 0.05 and 0.10 are gamma = 16.97 and 6.94.
    assert std_to_gamma(0.05) == pytest.approx(16.97, abs=0.005)
    assert std_to_gamma(0.10) == pytest.approx(6.94, abs=0.005)
    for gamma in (0.5, 3.0, 6.94, 16.97, 100.0):
        std = np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))  # EDM2 eq. 3, written out here
        assert gamma_to_std(gamma) == pytest.approx(std, rel=1e-12)
        assert std_to_gamma(std) == pytest.approx(gamma, rel=1e-9)


@pytest.mark.parametrize("std", [0.05, 0.10, 0.2])
def test_the_std_of_the_tracked_averaging_weights_is_the_closed_form(std):
    """Track one profile over T steps of one-hot weights: the EMA is the weight each step gets."""
    steps = 3000
    net = Weights(steps)
    tracker = PowerEMA(net, [std])
    with torch.no_grad():
        for t in range(1, steps + 1):
            net.theta.zero_()
            net.theta[t - 1] = 1.0
            tracker.update(images=t, batch=1)
    weights = tracker.profiles[0][0].numpy()
    assert weights.sum() == pytest.approx(1.0, abs=1e-9)  # an average
    tau = np.arange(1, steps + 1) / steps
    mean = (weights * tau).sum()
    measured = np.sqrt((weights * (tau - mean) ** 2).sum())
    assert measured == pytest.approx(std, rel=2e-3)
    # and the weights follow tau^gamma (EDM2 eq. 2) away from the start
    gamma = std_to_gamma(std)
    ratio = weights[steps // 2 - 1] / weights[-1]
    assert ratio == pytest.approx(0.5**gamma, rel=1e-2)


def test_the_inner_products_of_profiles_match_numerical_integration():
    def profile(t, gamma):
        return lambda tau: (gamma + 1) * tau**gamma / t ** (gamma + 1) if tau <= t else 0.0

    for (ta, sa), (tb, sb) in [((100, 0.05), (60, 0.10)), ((40, 0.10), (100, 0.05)), ((80, 0.07), (80, 0.07))]:
        ga, gb = std_to_gamma(sa), std_to_gamma(sb)
        numeric = integrate.quad(lambda x: profile(ta, ga)(x) * profile(tb, gb)(x), 0, min(ta, tb), limit=200)[0]
        assert float(profile_inner_products(ta, ga, tb, gb)) == pytest.approx(numeric, rel=1e-8)


def random_walk_tracking(tmp_path, steps=2000, every=40):
    """Weights on a seeded random walk; profiles 0.05/0.10 snapshotted every `every` steps, 0.07 tracked directly."""
    generator = torch.Generator().manual_seed(0)
    net = Weights(64)
    stored, direct = PowerEMA(net, [0.05, 0.10]), PowerEMA(net, [0.07])
    with torch.no_grad():
        for t in range(1, steps + 1):
            net.theta.add_(torch.randn(64, generator=generator, dtype=torch.float64))
            stored.update(t, 1)
            direct.update(t, 1)
            if t % every == 0:
                write_snapshot(str(tmp_path), t, t, stored)
    return stored, direct


def test_a_reconstruction_matches_the_profile_tracked_directly(tmp_path):
    stored, direct = random_walk_tracking(tmp_path)
    step, weights, coefficients = reconstruct(str(tmp_path), [0.07])
    assert step == 2000 and coefficients[0.07].sum() == pytest.approx(1.0)
    rebuilt = weights[0.07]["theta"].double()
    target = direct.profiles[0][0]
    spread = (stored.profiles[0][0] - stored.profiles[1][0]).norm()  # how far apart the two stored profiles are
    error = float((rebuilt - target).norm() / spread)
    print(f"reconstruction error {error:.2e} of the stored profiles' distance")
    # Measured: 3e-5 of the distance between the stored 0.05 and 0.10 profiles (snapshots are float32).
    assert error < 1e-3, error
    naive = float((0.5 * (stored.profiles[0][0] + stored.profiles[1][0]) - target).norm() / spread)
    assert error < naive / 10  # far better than averaging the two stored profiles


def test_reconstruction_reads_only_the_snapshots_up_to_the_step(tmp_path):
    random_walk_tracking(tmp_path, steps=400, every=40)
    at, before, coefficients = reconstruct(str(tmp_path), [0.08], at=200)
    assert at == 200 and len(coefficients[0.08]) == 2 * 5  # two profiles at steps 40 .. 200
    # The result is the coefficients' combination of the stored tensors, read here independently.
    from safetensors.torch import load_file

    expected = torch.zeros(64, dtype=torch.float64)
    rows = [(s, i) for s in range(40, 201, 40) for i in range(2)]
    for x, (s, i) in zip(coefficients[0.08], rows):
        expected += float(x) * load_file(str(tmp_path / "ema-snapshots" / f"snapshot-{s:08d}.safetensors"))[f"profile{i}/theta"].double()
    assert torch.allclose(before[0.08]["theta"].double(), expected, rtol=0, atol=1e-5 * expected.abs().max())
    # Snapshots after the step are not read: damaging them changes nothing.
    for step, path in list_snapshots(str(tmp_path)):
        if step > 200:
            with open(path, "wb") as file:
                file.write(b"not a snapshot")
    assert torch.equal(reconstruct(str(tmp_path), [0.08], at=200)[1][0.08]["theta"], before[0.08]["theta"])
    with pytest.raises(ConfigError, match="not a readable EMA snapshot"):
        reconstruct(str(tmp_path), [0.08], at=400)
    with pytest.raises(ConfigError, match="--at 210 is not a snapshotted step"):
        reconstruct(str(tmp_path), [0.08], at=210)


@pytest.mark.parametrize("std", [0.0, -0.1, 0.3, float("nan"), True])
def test_impossible_stds_are_refused_in_one_line(std):
    with pytest.raises(ConfigError, match="relative EMA std must be a number in"):
        posthoc_ema.check_std(std)


def tiny(out, **overrides):
    settings = dict(preset="edm", data="8gaussians", data_size=256, net="mlp", net_options={"width": 32, "depth": 2},
                    steps=40, batch=32, warmup_images=320, checkpoint_every=10, log_every=10, out=str(out))
    settings.update(overrides)
    return TrainConfig(**settings)


def test_training_tracks_profiles_and_resumes_them_bit_exactly(tmp_path):
    train(tiny(tmp_path / "long", ema_snapshot_images=160), progress=False)
    train(tiny(tmp_path / "short", steps=20, ema_snapshot_images=160), progress=False)
    train(tiny(tmp_path / "short", ema_snapshot_images=160), progress=False)
    long, short = (load_checkpoint(list_checkpoints(str(tmp_path / name))[-1][1]) for name in ("long", "short"))
    assert long["posthoc_ema"]["stds"] == [0.05, 0.10]
    for a, b in zip(long["posthoc_ema"]["profiles"], short["posthoc_ema"]["profiles"]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(long["posthoc_ema"]["profiles"][0][0], long["posthoc_ema"]["profiles"][1][0])
    # Snapshots every 160 images = 5 steps, and at the last step; the same tensors and metadata either way.
    from safetensors import safe_open

    steps = [s for s, _ in list_snapshots(str(tmp_path / "long"))]
    assert steps == list(range(5, 41, 5)) == [s for s, _ in list_snapshots(str(tmp_path / "short"))]
    for (_, a), (_, b) in zip(list_snapshots(str(tmp_path / "long")), list_snapshots(str(tmp_path / "short"))):
        with safe_open(a, "pt") as fa, safe_open(b, "pt") as fb:
            assert fa.metadata() == fb.metadata() and sorted(fa.keys()) == sorted(fb.keys())
            assert all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())


def test_a_run_without_profiles_writes_no_snapshots(tmp_path):
    train(tiny(tmp_path / "run", steps=10, ema_stds=[]), progress=False)
    assert list_snapshots(str(tmp_path / "run")) == []
    assert "posthoc_ema" not in load_checkpoint(list_checkpoints(str(tmp_path / "run"))[-1][1])


# ---------------------------------------------------------------------------
# The command line: train with profiles, `edm-space ema`, sample the reconstruction.

from helpers_cli import TINY_TRAIN, cli_error, cli_ok  # noqa: E402


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ema") / "run"
    with one_torch_thread():
        from edm_space.cli import main

        try:
            main(["train", *TINY_TRAIN, "--steps", "6", "--checkpoint-every", "2", "--ema-snapshot-images", "16", "--out", str(run)])
        except SystemExit as done:
            assert done.code in (0, None)
    return run


def test_ema_command_writes_sampleable_runs_and_rebuilds_a_stored_profile(tracked_run, tmp_path, capsys):
    out = cli_ok(["ema", "--ckpt", str(tracked_run), "--std", "0.05,0.08", "--at", "4", "--out", str(tmp_path / "ema")], capsys)
    assert "std 0.080 at step 4" in out
    rebuilt = load_checkpoint(str(tmp_path / "ema" / "std0.050-step4" / "checkpoints" / "checkpoint-00000004.pt"))
    # The snapshot of step 4 holds the 0.05 profile itself: the least squares picks it out.
    from safetensors.torch import load_file

    stored = load_file(str(tracked_run / "ema-snapshots" / "snapshot-00000004.safetensors"))
    for name, tensor in rebuilt["ema"].items():
        expected = stored.get(f"profile0/{name}", stored.get(f"buffer/{name}"))
        assert torch.allclose(tensor, expected, rtol=0, atol=1e-6), name
    assert any(k.startswith("profile0/") for k in stored) and any(k.startswith("profile1/") for k in stored)
    cli_ok(["sample", "--ckpt", str(tmp_path / "ema" / "std0.080-step4"), "--n", "4", "--steps", "2", "--out", str(tmp_path / "s.npz")], capsys)
    assert np.load(tmp_path / "s.npz")["samples"].shape == (4, 2)


@pytest.mark.parametrize("argv, names", [
    (["--std", "0.5"], ["--std", "0.5"]),
    (["--std", "0.05,x"], ["--std", "'x'"]),
    (["--std", "0.05", "--at", "7"], ["--at 7", "1, 2, 3, 4, 5, 6"]),
])
def test_ema_command_refuses_bad_input_in_one_line(tracked_run, tmp_path, capsys, argv, names):
    cli_error(["ema", "--ckpt", str(tracked_run), *argv, "--out", str(tmp_path / "ema")], capsys, names, roots=[tracked_run, tmp_path])


def test_train_refuses_a_bad_ema_std_in_one_line(tmp_path, capsys):
    cli_error(["train", *TINY_TRAIN, "--ema-stds", "0.05,0.4", "--out", str(tmp_path / "run")], capsys, ["--ema-stds", "0.4"], roots=[tmp_path])


def test_sample_ema_std_is_the_reconstructed_run(tracked_run, tmp_path, capsys):
    cli_ok(["ema", "--ckpt", str(tracked_run), "--std", "0.07", "--at", "6", "--out", str(tmp_path / "ema")], capsys)
    common = ["--n", "4", "--steps", "2"]
    cli_ok(["sample", "--ckpt", str(tmp_path / "ema" / "std0.070-step6"), *common, "--out", str(tmp_path / "a.npz")], capsys)
    cli_ok(["sample", "--ckpt", str(tracked_run), "--ema-std", "0.07", *common, "--out", str(tmp_path / "b.npz")], capsys)
    cli_ok(["sample", "--ckpt", str(tracked_run), *common, "--out", str(tmp_path / "c.npz")], capsys)
    a, b, c = (np.load(tmp_path / f"{name}.npz")["samples"] for name in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)
