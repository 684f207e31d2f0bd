"""`edm-space import diffusers`: tiny diffusers models with random weights, saved with save_pretrained, imported with
the CLI; the imported denoiser equals the one the diffusers model and scheduler define, and the project's solvers
reproduce diffusers' own scheduler loops.

The reference denoised estimates below are written from diffusers' scheduler formulas (its step functions), in
float64, not from edm-space's presets.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch

from edm_space.training import load_trained
from helpers_cli import cli_error, cli_ok

diffusers = pytest.importorskip("diffusers")

T = 1000
CLASSES = 10


pytestmark = pytest.mark.usefixtures("one_thread", "no_debug_env")


def tiny_unet(num_class_embeds=None, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return diffusers.UNet2DModel(
            sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
            down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=num_class_embeds)


def tiny_condition_unet(seed=0):
    """A UNet2DConditionModel without cross-attention blocks, conditioned on classes through num_class_embeds."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return diffusers.UNet2DConditionModel(
            sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4, mid_block_type=None,
            down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=CLASSES, cross_attention_dim=8)


def tiny_dit(seed=0):
    """A class-conditional DiT that also predicts its variance (out_channels = 2 in_channels, DiT's learn_sigma)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=2, out_channels=4, num_layers=1,
                                                sample_size=8, patch_size=2, num_embeds_ada_norm=CLASSES, norm_num_groups=2)
        for parameter in model.parameters():  # adaLN-zero starts at zero: give every weight a value so the test sees them
            parameter.data.normal_(0, 0.2)
        return model


def save(tmp_path, name, model, scheduler, vae=None):
    folder = tmp_path / name
    folder.mkdir()
    model.save_pretrained(folder / ("transformer" if isinstance(model, diffusers.DiTTransformer2DModel) else "unet"))
    scheduler.save_pretrained(folder / "scheduler")
    index = {"_class_name": "DiffusionPipeline", "scheduler": ["diffusers", type(scheduler).__name__]}
    if vae is not None:
        vae.save_pretrained(folder / "vae")
        index["vae"] = ["diffusers", type(vae).__name__]
    index["transformer" if isinstance(model, diffusers.DiTTransformer2DModel) else "unet"] = ["diffusers", type(model).__name__]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def imported(tmp_path, capsys, name, model, scheduler, vae=None):
    folder = save(tmp_path, name, model, scheduler, vae)
    run = tmp_path / f"{name}-run"
    cli_ok(["import", "diffusers", folder, "--out", run], capsys)
    return str(run)


# ---------------------------------------------------------------------------
# The scheduler's formulas, per level: (sigma in x_hat = x_t / s units, the network's input as a multiple of x_hat,
# the network's timestep, x_0 from the network's output and x_hat).


def _abar64(scheduler):
    return scheduler.alphas_cumprod.to(torch.float64)


def levels_ddpm(scheduler, prediction):
    """DDPMScheduler / DDIMScheduler.step (and the multistep schedulers' convert_model_output): x_t = sqrt(abar) x_0 +
    sqrt(1 - abar) eps = sqrt(abar) x_hat at integer timesteps."""
    scheduler.set_timesteps(8)
    rows = []
    for k in scheduler.timesteps.tolist():
        a = _abar64(scheduler)[k]
        to_x0 = {
            "epsilon": lambda out, x_hat, a=a: (a.sqrt() * x_hat - (1 - a).sqrt() * out) / a.sqrt(),
            "v_prediction": lambda out, x_hat, a=a: a * x_hat - (1 - a).sqrt() * out,
            "sample": lambda out, x_hat: out,
        }[prediction]
        rows.append((((1 - a) / a).sqrt(), a.sqrt(), float(k), to_x0))
    return rows


def _euler_x0(prediction, sigma):
    """EulerDiscreteScheduler.step's pred_original_sample from the unscaled sample x_hat."""
    return {
        "epsilon": lambda out, x_hat: x_hat - sigma * out,
        "v_prediction": lambda out, x_hat: out * (-sigma / (sigma**2 + 1).sqrt()) + x_hat / (sigma**2 + 1),
        "sample": lambda out, x_hat: out,
    }[prediction]


def levels_euler(scheduler, prediction):
    """EulerDiscreteScheduler: the model sees x_hat / sqrt(sigma^2 + 1) at its (fractional) timestep; sigma is
    np.interp of the training sigmas over timesteps, or, with karras sigmas, the timestep is log-sigma interpolated."""
    scheduler.set_timesteps(8)
    train_sigmas = ((1 - _abar64(scheduler)) / _abar64(scheduler)).sqrt().numpy()
    rows = []
    for i, t in enumerate(scheduler.timesteps.tolist()):
        if scheduler.config.use_karras_sigmas:
            sigma = torch.tensor(float(scheduler.sigmas[i]), dtype=torch.float64)
            t = float(np.interp(np.log(sigma.item()), np.log(train_sigmas), np.arange(T)))
        else:
            sigma = torch.tensor(float(np.interp(t, np.arange(T), train_sigmas)), dtype=torch.float64)
        rows.append((sigma, 1 / (sigma**2 + 1).sqrt(), t, _euler_x0(prediction, sigma)))
    return rows


def levels_flow(scheduler, prediction):
    """FlowMatchEulerDiscreteScheduler: x_t = (1 - s) x_0 + s eps = (1 - s) x_hat, model(x_t, 1000 s) = eps - x_0,
    and its Euler step to s = 0 gives x_0 = x_t - s v."""
    scheduler.set_timesteps(8)
    rows = []
    for s in scheduler.sigmas[1:-1].tolist():  # the first level is s = 1: pure noise, sigma = inf in x_hat units
        s = torch.tensor(s, dtype=torch.float64)
        rows.append((s / (1 - s), 1 - s, float(s) * T, lambda out, x_hat, s=s: (1 - s) * x_hat - s * out))
    return rows


def levels_edm(scheduler, prediction):
    """EDMEulerScheduler: precondition_inputs / precondition_noise / precondition_outputs (Karras et al. 2022, Table 1)."""
    scheduler.set_timesteps(8)
    sd = scheduler.config.sigma_data
    rows = []
    for sigma in scheduler.sigmas[:-1].tolist():
        sigma = torch.tensor(sigma, dtype=torch.float64)
        c_skip, c_out = sd**2 / (sigma**2 + sd**2), sigma * sd / (sigma**2 + sd**2).sqrt()
        rows.append((sigma, 1 / (sigma**2 + sd**2).sqrt(), float(0.25 * sigma.log()),
                     lambda out, x_hat, c_skip=c_skip, c_out=c_out: c_skip * x_hat + c_out * out))
    return rows


CASES = {
    "ddpm-linear-epsilon": (lambda: diffusers.DDPMScheduler(clip_sample=False), levels_ddpm, "epsilon", "ddpm"),
    "ddim-scaled-linear-v": (lambda: diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                                             prediction_type="v_prediction", clip_sample=False), levels_ddpm, "v_prediction", "ddim"),
    "ddpm-cosine-sample": (lambda: diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="sample"), levels_ddpm, "sample", "ddpm"),
    "euler-linear-epsilon": (lambda: diffusers.EulerDiscreteScheduler(), levels_euler, "epsilon", "ddim"),
    "euler-karras-v": (lambda: diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                                                prediction_type="v_prediction", use_karras_sigmas=True), levels_euler, "v_prediction", "ddim"),
    "flow-shift-3": (lambda: diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), levels_flow, "flow", "sd3"),
    "edm-euler": (lambda: diffusers.EDMEulerScheduler(sigma_data=0.7), levels_edm, "epsilon", "edm"),
    "ddim-condition-unet": (lambda: diffusers.DDIMScheduler(clip_sample=False), levels_ddpm, "epsilon", "ddim"),
    "dpmsolver-multistep-v": (lambda: diffusers.DPMSolverMultistepScheduler(prediction_type="v_prediction"), levels_ddpm, "v_prediction", "ddim"),
    "unipc-multistep-cosine": (lambda: diffusers.UniPCMultistepScheduler(beta_schedule="squaredcos_cap_v2"), levels_ddpm, "epsilon", "ddim"),
}
CONDITIONAL = ("ddpm-linear-epsilon", "ddim-condition-unet", "flow-shift-3")


@pytest.mark.parametrize("case", list(CASES))
def test_imported_denoiser_equals_the_schedulers_formulas(case, tmp_path, capsys):
    make_scheduler, levels, prediction, preset = CASES[case]
    if case.startswith("flow"):
        model = tiny_dit()
    elif case == "ddim-condition-unet":
        model = tiny_condition_unet()
    else:
        model = tiny_unet(num_class_embeds=CLASSES if case in CONDITIONAL else None)
    run = imported(tmp_path, capsys, case, model, make_scheduler())
    denoiser, config, item_shape, num_classes, _ = load_trained(run)
    assert config.preset == preset and num_classes == (CLASSES if case in CONDITIONAL else 0)
    denoiser.network.double()
    model = model.double().eval()
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, *item_shape, generator=generator, dtype=torch.float64)
    labels = torch.tensor([3, 7]) if num_classes else None
    one_hot = torch.nn.functional.one_hot(labels, num_classes).to(torch.float64) if num_classes else None
    rows = levels(make_scheduler(), prediction)
    assert len(rows) >= 6
    for sigma, input_scale, timestep, to_x0 in rows:
        x_hat = x0 + sigma * torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            kwargs = {"class_labels": labels} if num_classes else {}
            if case == "ddim-condition-unet":
                kwargs["encoder_hidden_states"] = None
            out = model(input_scale * x_hat, torch.full((2,), timestep, dtype=torch.float64), **kwargs).sample[:, : item_shape[0]]
            expected = to_x0(out, x_hat)
            got = denoiser(x_hat, torch.full((2,), float(sigma), dtype=torch.float64), one_hot)
        assert torch.allclose(got, expected, rtol=1e-6, atol=1e-6 * float(expected.abs().max())), (case, float(sigma))


# ---------------------------------------------------------------------------
# The project's solvers on an imported run against diffusers' own scheduler loops (float32 networks).


def test_ddim_solver_reproduces_the_ddim_scheduler_loop(tmp_path, capsys):
    import samplers

    model = tiny_unet().eval()
    scheduler = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    run = imported(tmp_path, capsys, "ddim", model, scheduler)
    denoiser, config, *_ = load_trained(run)
    scheduler.set_timesteps(10)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    x = noise.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t).sample, t, x, eta=0.0).prev_sample
        abar = _abar64(scheduler)[scheduler.timesteps]
        sigmas = ((1 - abar) / abar).sqrt()
        start = float((1 - abar[0]).sqrt())  # the sampler starts at latents * s(t_0) sigma(t_0) = latents sqrt(1 - abar)
        ours = samplers.sample(denoiser, noise.double() / start, formulation=presets_of(config), solver="ddim", discretization=sigmas)
    assert torch.allclose(ours.float(), x, rtol=1e-5, atol=1e-5), float((ours - x).abs().max())


def test_euler_solver_reproduces_the_flow_matching_euler_loop(tmp_path, capsys):
    import samplers

    model = tiny_dit().eval()
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    run = imported(tmp_path, capsys, "flow", model, scheduler)
    denoiser, config, *_ = load_trained(run)
    scheduler.set_timesteps(10)
    noise = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([1, 8])
    x = noise.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t.expand(2), class_labels=labels).sample[:, :2], t, x).prev_sample
        s = scheduler.sigmas[:-1].double()
        sigmas = torch.where(s < 1, s / (1 - s), torch.full_like(s, math.inf))
        one_hot = torch.nn.functional.one_hot(labels, CLASSES).double()
        ours = samplers.sample(lambda x_hat, sigma: denoiser(x_hat, sigma, one_hot), noise.double(), formulation=presets_of(config),
                               solver="euler", discretization=sigmas)
    assert torch.allclose(ours.float(), x, rtol=1e-5, atol=1e-5), float((ours - x).abs().max())


def presets_of(config):
    from edm_space.training import build_formulation

    return build_formulation(config)


# ---------------------------------------------------------------------------
# The command line on imported runs, and its refusals.


def test_sample_an_imported_ddpm_unet_and_a_guided_flow_dit_from_the_command_line(tmp_path, capsys):
    unet_run = imported(tmp_path, capsys, "ddpm", tiny_unet(), diffusers.DDPMScheduler())
    out = cli_ok(["sample", "--ckpt", unet_run, "--solver", "dpm++2m", "--steps", "10", "--n", "2", "--out", tmp_path / "a.npz"], capsys)
    assert "dpm++2m, 10 steps" in out
    assert np.isfinite(np.load(tmp_path / "a.npz")["samples"]).all()
    dit_run = imported(tmp_path, capsys, "flow", tiny_dit(), diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    out = cli_ok(["sample", "--ckpt", dit_run, "--guidance", "2", "--steps", "4", "--n", "2", "--out", tmp_path / "b.npz"], capsys)
    assert "w = 2" in out and "sd3 + euler" in out
    assert np.load(tmp_path / "b.npz")["samples"].shape == (2, 2, 8, 8)


def test_import_refusals_are_one_line(tmp_path, capsys, monkeypatch):
    cli_error(["import", "diffusers", tmp_path / "missing", "--out", tmp_path / "r"], capsys, names=["missing", "does not exist"], roots=[tmp_path])
    # An unknown model class.
    folder = save(tmp_path, "unknown", tiny_unet(), diffusers.DDPMScheduler())
    config_path = folder / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(dict(config, _class_name="UNet3DConditionModel")))
    cli_error(["import", "diffusers", folder, "--out", tmp_path / "r"], capsys, names=["UNet3DConditionModel", "UNet2DModel"], roots=[tmp_path])
    # A config that disagrees with the weights.
    config_path.write_text(json.dumps(dict(config, block_out_channels=[8, 32])))
    cli_error(["import", "diffusers", folder, "--out", tmp_path / "r"], capsys, names=["cannot load", "UNet2DModel"], roots=[tmp_path])
    # A scheduler whose formulas no preset expresses, and one this project does not know.
    for scheduler, names in ((diffusers.DDPMScheduler(rescale_betas_zero_snr=True), ["rescale_betas_zero_snr"]),
                             (diffusers.EDMEulerScheduler(sigma_schedule="exponential"), ["sigma_schedule", "exponential"]),
                             (diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True), ["use_karras_sigmas"]),
                             (diffusers.PNDMScheduler(), ["PNDMScheduler", "DDIMScheduler"])):
        folder = save(tmp_path, type(scheduler).__name__ + str(len(names)), tiny_unet(), scheduler)
        cli_error(["import", "diffusers", folder, "--out", tmp_path / "r"], capsys, names=names, roots=[tmp_path])
    # Without diffusers the command names the extra that installs it.
    monkeypatch.setitem(sys.modules, "diffusers", None)
    cli_error(["import", "diffusers", folder, "--out", tmp_path / "r"], capsys, names=['".[diffusers]"'], roots=[tmp_path])


def tiny_vae(kind, seed=0):
    """A 3 x 16 x 16 image autoencoder with 4 latent channels at 8 x 8, with SD-like scaling and shift factors."""
    common = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=0.5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "kl":
            return diffusers.AutoencoderKL(**common, shift_factor=0.1)
        return diffusers.VQModel(**common, num_vq_embeddings=16, vq_embed_dim=4)


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_a_latent_pipeline_imports_with_its_autoencoder(kind, tmp_path, capsys):
    from edm_space.latent import open_latent_space

    unet = diffusers.UNet2DModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    vae = tiny_vae(kind).eval()
    run = imported(tmp_path, capsys, "latent-" + kind, unet, diffusers.DDIMScheduler(), vae)
    _, config, item_shape, _, _ = load_trained(run)
    assert item_shape == (4, 8, 8)
    space = open_latent_space(config.latent_space, run)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        # diffusers' pipelines decode vae.decode(latents / scaling_factor + shift_factor)
        expected = vae.decode(z / 0.5 + (0.1 if kind == "kl" else 0.0)).sample.double()
        torch.testing.assert_close(space.decode(z), expected, rtol=1e-5, atol=1e-5)
    cli_ok(["sample", "--ckpt", run, "--steps", "3", "--n", "2", "--out", tmp_path / "s.npz"], capsys)
    assert np.load(tmp_path / "s.npz")["samples"].shape == (2, 3, 16, 16)


def test_a_model_folder_with_its_scheduler_config_beside_it_imports(tmp_path, capsys):
    unet = tiny_unet()
    folder = tmp_path / "model"
    unet.save_pretrained(folder)
    cli_error(["import", "diffusers", folder, "--out", tmp_path / "r"], capsys, names=["no scheduler"], roots=[tmp_path])
    diffusers.DDIMScheduler(prediction_type="v_prediction").save_pretrained(folder)  # scheduler_config.json beside config.json
    out = cli_ok(["import", "diffusers", folder, "--out", tmp_path / "r"], capsys)
    assert "UNet2DModel + DDIMScheduler" in out
    _, config, item_shape, _, _ = load_trained(str(tmp_path / "r"))
    assert (config.preset, config.preset_options["prediction"], item_shape) == ("ddim", "v_prediction", (1, 8, 8))
