"""`edm-space export --format diffusers`: a DiT run loads with diffusers alone and computes the same denoiser; the DiT
conventions (column-first positions, (p, p, C) output tokens) are recorded, and runs written before keep loading."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import one_torch_thread
from edm_space import networks
from edm_space.rundir import list_checkpoints, load_checkpoint, save_checkpoint
from edm_space.training import TrainConfig, load_trained, read_run_config, train
from helpers_cli import cli_error, cli_ok

diffusers = pytest.importorskip("diffusers")

from test_interop_diffusers import levels_ddpm, levels_flow  # noqa: E402

EXPORTABLE = {"depth": 1, "width": 16, "heads": 2, "patch": 2, "qk_norm": False, "noise_embedding": "dit"}


pytestmark = pytest.mark.usefixtures("one_thread", "no_debug_env")


def dit_run(out, preset, net_options, preset_options=None, net="dit"):
    """A class-conditional DiT (or `net`) on 8x8 digits, trained 3 steps at a large learning rate so that no weight is still zero."""
    with one_torch_thread():
        train(TrainConfig(preset=preset, preset_options=preset_options or {}, data="digits", data_size=32, net=net, net_options=net_options,
                          steps=3, batch=8, lr=0.05, warmup_images=8, conditional=True, checkpoint_every=3, log_every=3, out=str(out)),
              progress=False)
    return str(out)


def formulas(scheduler, name):
    """Per level of the scheduler: (sigma, network input / x_hat, timestep, x_0 from (output, x_hat)), diffusers' formulas."""
    return levels_flow(scheduler, "flow") if name == "FlowMatchEulerDiscreteScheduler" else levels_ddpm(scheduler, "epsilon")


@pytest.mark.parametrize("preset, options, scheduler_name", [
    ("sd3", {"shift": 2.0}, "FlowMatchEulerDiscreteScheduler"),
    ("ddim", {}, "DDIMScheduler"),
])
def test_exported_dit_loads_with_diffusers_alone_and_computes_the_same_denoiser(tmp_path, capsys, preset, options, scheduler_name):
    net_options = dict(EXPORTABLE, noise_scale=1000.0 if preset == "sd3" else 1.0)
    run = dit_run(tmp_path / "run", preset, net_options, options)
    assert read_run_config(run).net_options["convention"] == "dit"  # a new run records its convention
    cli_ok(["export", run, "--format", "diffusers", "--raw", "--out", tmp_path / "hub"], capsys)
    model = diffusers.DiTTransformer2DModel.from_pretrained(str(tmp_path / "hub"), subfolder="transformer", local_files_only=True).double()
    scheduler_class = json.loads((tmp_path / "hub" / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    assert scheduler_class == scheduler_name
    scheduler = getattr(diffusers, scheduler_class).from_pretrained(str(tmp_path / "hub"), subfolder="scheduler", local_files_only=True)
    if preset == "sd3":
        assert scheduler.config.shift == 2.0
    denoiser = load_trained(run, ema=False)[0]
    denoiser.network.double()
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([2, 9])
    one_hot = torch.nn.functional.one_hot(labels, 10).double()
    x0 = torch.randn(2, 1, 8, 8, generator=generator, dtype=torch.float64)
    for sigma, input_scale, timestep, to_x0 in formulas(scheduler, scheduler_class):
        x_hat = x0 + sigma * torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            for rows, null in ((one_hot, torch.tensor([10, 10])), (None, None)):  # the null label is diffusers' class 10
                out = model(input_scale * x_hat, timestep=torch.full((2,), timestep, dtype=torch.float64),
                            class_labels=labels if null is None else null).sample
                expected = to_x0(out, x_hat)
                got = denoiser(x_hat, torch.full((2,), float(sigma), dtype=torch.float64), one_hot if null is None else torch.zeros_like(one_hot))
                assert out.abs().max() > 1e-3  # the network's output is not the zero of its initialisation
                # Both models hold their position table and timestep features in float32: agreement to float32 round-off.
                assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max())), float(sigma)
    # And back: the exported folder imports as a run with the same denoiser.
    cli_ok(["import", "diffusers", tmp_path / "hub", "--out", tmp_path / "back"], capsys)
    back = load_trained(str(tmp_path / "back"))[0]
    x_hat = torch.randn(2, 1, 8, 8, generator=generator)
    sigma = torch.tensor([0.5, 3.0], dtype=torch.float64)
    with torch.no_grad():
        there, here = back(x_hat, sigma, one_hot.float()), load_trained(run, ema=False)[0](x_hat, sigma, one_hot.float())
    # diffusers computes a DDPM chain in float32, this run in float64: c_noise moves by ~1e-5 of a timestep.
    assert torch.allclose(there, here, rtol=1e-4, atol=1e-4 * float(here.abs().max())), float((there - here).abs().max())


@pytest.mark.parametrize("net, options, option, legacy, new", [
    ("dit", {"depth": 1, "width": 16, "heads": 2, "patch": 2}, "convention", "legacy", "dit"),
    ("unet", {"channels": 8, "channel_mult": [1, 2], "blocks_per_level": 1}, "min_channels_per_group", 1, 4),
])
def test_a_run_without_a_recorded_default_loads_with_the_value_it_was_trained_with(tmp_path, net, options, option, legacy, new):
    run = dit_run(tmp_path / "run", "edm", options, net=net)
    config_path = tmp_path / "run" / "config.json"
    payload = json.loads(config_path.read_text())
    assert payload["net_options"][option] == new  # a new run records the value it is built with
    # Strip the record, as runs written before it existed have none, from config.json and the checkpoint.
    del payload["net_options"][option]
    config_path.write_text(json.dumps(payload))
    path = list_checkpoints(run)[-1][1]
    state = load_checkpoint(path)
    state["config"] = json.dumps(payload)
    save_checkpoint(path, state)
    denoiser = load_trained(run, ema=False)[0]
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    c_noise, labels = torch.tensor([0.1, -0.3]), torch.nn.functional.one_hot(torch.tensor([1, 4]), 10).float()
    outputs = {}
    for value in (legacy, new):
        network = networks.build(net, (1, 8, 8), **options, label_dim=10, **{option: value})
        network.load_state_dict(state["model"])
        with torch.no_grad():
            outputs[value] = network(x, c_noise, labels)
    with torch.no_grad():
        loaded = denoiser.network(x, c_noise, labels)
    assert torch.equal(loaded, outputs[legacy]) and not torch.allclose(loaded, outputs[new])


def test_export_refusals(tmp_path, capsys):
    run = dit_run(tmp_path / "run", "edm", {"depth": 1, "width": 16, "heads": 2, "patch": 2})
    cli_error(["export", run, "--format", "diffusers", "--out", tmp_path / "hub"], capsys, names=["qk_norm", "noise_embedding"], roots=[tmp_path])
    vp = dit_run(tmp_path / "vp", "vp", EXPORTABLE)
    cli_error(["export", vp, "--format", "diffusers", "--out", tmp_path / "hub"], capsys, names=["vp", "safetensors"], roots=[tmp_path])
