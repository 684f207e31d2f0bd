"""EdmSpaceScheduler: a diffusers pipeline with a solver of this project equals samplers.sample on the imported run."""

from __future__ import annotations

import pytest
import torch

import samplers
from edm_space.training import build_formulation, load_trained
from helpers_cli import cli_ok

diffusers = pytest.importorskip("diffusers")

from edm_space.compat.diffusers_scheduler import EdmSpaceScheduler  # noqa: E402
from test_interop_diffusers import save, tiny_unet  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread", "no_debug_env")


@pytest.mark.parametrize("solver", ["unipc-3", "heun"])
def test_ddpm_pipeline_with_our_scheduler_equals_samplers_sample_on_the_imported_run(solver, tmp_path, capsys):
    unet, reference = tiny_unet().eval(), diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    folder = save(tmp_path, "ddpm", unet, reference)
    cli_ok(["import", "diffusers", folder, "--out", tmp_path / "run"], capsys)
    denoiser, config, *_ = load_trained(str(tmp_path / "run"))
    f = build_formulation(config)

    scheduler = EdmSpaceScheduler.from_solver(solver, scheduler=reference)
    pipeline = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    with torch.no_grad():
        images = pipeline(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=6, output_type="pt").images
    assert len(scheduler.timesteps) == samplers.get(solver).nfe(6)  # one network call per evaluation of the solver

    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t0 = samplers.time_steps(f, 6)[0]
    start = float(f.sigma(t0) * f.scale(t0))  # the pipeline's first sample is the network input s(t_0) x_hat
    with torch.no_grad():
        ours = samplers.sample(denoiser, noise.double() / start, formulation=f, solver=solver, num_steps=6)
    expected = (ours / 2 + 0.5).clamp(0, 1).float()  # DDPMPipeline's output_type="pt": [B, C, H, W] in [0, 1]
    assert 0 < float(((ours / 2 + 0.5) > 0).float().mean())  # not everything clamped away
    torch.testing.assert_close(images, expected, rtol=1e-5, atol=1e-5)
