"""`edm-space export --format safetensors` and `edm-space import edm-space`: the same denoiser, bit for bit, no pickle."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from conftest import one_torch_thread
from edm_space.training import TrainConfig, load_trained, train
from edm_space.weights import WEIGHTS_NAME, read_safetensors
from helpers_cli import cli_error, cli_ok


pytestmark = pytest.mark.usefixtures("one_thread", "no_debug_env")


@pytest.fixture(scope="module")
def conditional_unet_run(tmp_path_factory):
    """A tiny class-conditional vp U-Net on the 8x8 digits: raw and EMA weights differ after 4 steps."""
    out = tmp_path_factory.mktemp("unet") / "run"
    with one_torch_thread():
        train(TrainConfig(preset="vp", data="digits", data_size=32, net="unet", steps=4, batch=8, warmup_images=8,
                          net_options={"channels": 8, "channel_mult": [1], "blocks_per_level": 1}, conditional=True,
                          checkpoint_every=4, log_every=4, ema_halflife_images=8, ema_rampup_ratio=None, out=str(out)),
              progress=False)
    return str(out)


def _outputs(denoiser, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 1, 8, 8, generator=generator, dtype=torch.float64)
    sigma = torch.tensor([0.1, 1.0, 30.0], dtype=torch.float64)
    labels = torch.nn.functional.one_hot(torch.tensor([0, 3, 9]), 10).to(torch.float64)
    with torch.no_grad():
        return denoiser(x, sigma, labels)


@pytest.mark.parametrize("raw", [False, True])
def test_export_then_import_rebuilds_the_denoiser_bit_for_bit(conditional_unet_run, tmp_path, capsys, raw):
    exported, imported = tmp_path / "exported", tmp_path / "imported"
    cli_ok(["export", conditional_unet_run, "--format", "safetensors", "--out", exported] + (["--raw"] if raw else []), capsys)
    cli_ok(["import", "edm-space", exported, "--out", imported], capsys)
    original = _outputs(load_trained(conditional_unet_run, ema=not raw)[0])
    other = _outputs(load_trained(conditional_unet_run, ema=raw)[0])
    assert not torch.equal(original, other)  # EMA and raw weights differ, so the test tells them apart
    for folder in (exported, imported):
        denoiser, config, item_shape, num_classes, step = load_trained(str(folder), ema=not raw)
        assert torch.equal(_outputs(denoiser), original)
        assert (item_shape, num_classes, step, config.preset) == ((1, 8, 8), 10, 4, "vp")
    tensors, metadata = read_safetensors(str(imported / WEIGHTS_NAME))
    assert metadata["weights"] == ("raw" if raw else "ema") and metadata["step"] == "4"


def test_sample_from_an_exported_run_equals_sampling_the_run(conditional_unet_run, tmp_path, capsys):
    import numpy as np

    exported = tmp_path / "exported"
    cli_ok(["export", conditional_unet_run, "--out", exported], capsys)
    common = ["--n", "3", "--steps", "3", "--solver", "euler", "--batch", "3"]
    cli_ok(["sample", "--ckpt", conditional_unet_run, *common, "--out", tmp_path / "a.npz"], capsys)
    cli_ok(["sample", "--ckpt", exported, *common, "--out", tmp_path / "b.npz"], capsys)
    assert np.array_equal(np.load(tmp_path / "a.npz")["samples"], np.load(tmp_path / "b.npz")["samples"])


def test_export_and_import_refusals(conditional_unet_run, tmp_path, capsys):
    exported = tmp_path / "exported"
    cli_ok(["export", conditional_unet_run, "--out", exported], capsys)
    cli_error(["export", conditional_unet_run, "--out", exported], capsys, names=[str(exported), "already exists"], roots=[tmp_path])
    cli_error(["sample", "--ckpt", exported, "--no-ema", "--n", "1", "--out", tmp_path / "s.npz"], capsys, names=["ema"], roots=[tmp_path])
    cli_error(["import", "edm-space", tmp_path / "missing", "--out", tmp_path / "r"], capsys, names=["missing"], roots=[tmp_path])

    # A pickle where the safetensors file belongs is refused, and its code never runs.
    damaged = tmp_path / "damaged"
    shutil.copytree(exported, damaged)
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"x": Payload()}, damaged / WEIGHTS_NAME)
    cli_error(["import", "edm-space", damaged, "--out", tmp_path / "r"], capsys, names=["safetensors"], roots=[tmp_path])
    cli_error(["sample", "--ckpt", damaged, "--n", "1", "--out", tmp_path / "s.npz"], capsys, names=["safetensors"], roots=[tmp_path])
    assert not marker.exists()

    # Weights that do not fit the config's network.
    tensors, metadata = read_safetensors(str(exported / WEIGHTS_NAME))
    name = min(k for k in tensors if tensors[k].numel() > 1)  # a tensor of one element (the 1-channel out.bias) would fit zeros(1)
    tensors[name] = torch.zeros(1)
    from edm_space.weights import safetensors_bytes

    (damaged / WEIGHTS_NAME).write_bytes(safetensors_bytes(tensors, metadata))
    cli_error(["import", "edm-space", damaged, "--out", tmp_path / "r"], capsys, names=["does not fit", "unet"], roots=[tmp_path])


def test_a_failed_write_leaves_no_directory_behind(conditional_unet_run, tmp_path, capsys, monkeypatch):
    import errno

    import edm_space.weights as weights

    exported = tmp_path / "exported"
    cli_ok(["export", conditional_unet_run, "--out", exported], capsys)
    calls = []

    def failing_write(path, data):
        calls.append(path)
        if len(calls) == 2:  # the weights are written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return original(path, data)

    original = weights.write_atomic
    monkeypatch.setattr(weights, "write_atomic", failing_write)
    cli_error(["import", "edm-space", exported, "--out", tmp_path / "new" / "parents" / "run"], capsys, names=["disk is full"], roots=[tmp_path])
    assert len(calls) == 2
