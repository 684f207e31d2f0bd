"""`edm-space train` and `edm-space sample --ckpt` as a user meets them: every solver on trained models of two
presets, cross-sampling, and one-line errors that leave the run directory untouched."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import presets
import samplers
from edm_space.cli import main
from edm_space.training import TrainConfig, list_checkpoints, load_trained, train
from conftest import snapshot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MLP = {"width": 32, "depth": 2}
UNET = {"channels": 8, "channel_mult": [1, 2], "blocks_per_level": 1}
TINY_ARGS = ["--net-option", "width=32", "--net-option", "depth=2", "--batch", "32", "--warmup", "320"]


pytestmark = pytest.mark.usefixtures("one_thread", "no_debug_env")


def _train(out, **settings):
    config = dict(data="8gaussians", data_size=256, net="mlp", net_options=MLP, steps=20, batch=32,
                  warmup_images=320, checkpoint_every=10, log_every=10, out=str(out))
    config.update(settings)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TrainConfig(**config), progress=False)
    finally:
        torch.set_num_threads(threads)
    return str(out)


@pytest.fixture(scope="module")
def edm_run(tmp_path_factory):
    """A tiny edm run on 8gaussians with checkpoints at steps 10 and 20, made the way the CLI makes it."""
    return _train(tmp_path_factory.mktemp("edm") / "run", preset="edm")


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    """A flow run trained long enough that its ODE is not a straight line."""
    return _train(tmp_path_factory.mktemp("flow") / "run", preset="flow", data_size=1024, steps=200, batch=128,
                  warmup_images=2000, checkpoint_every=100, log_every=50)


@pytest.fixture(scope="module")
def vp_digits_run(tmp_path_factory):
    """A class-conditional vp U-Net on 64 of the 8x8 digits."""
    return _train(tmp_path_factory.mktemp("vp") / "run", preset="vp", data="digits", data_size=64, net="unet",
                  net_options=UNET, steps=6, batch=16, checkpoint_every=6, conditional=True)


@pytest.fixture
def edm_copy(edm_run, tmp_path):
    """A private copy of the edm run that a test may damage."""
    return shutil.copytree(edm_run, tmp_path / "run")



def one_line_error(argv, capsys):
    """Run the CLI in-process; it must exit non-zero with exactly one stderr line starting 'error:'."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code not in (0, None)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def newest_checkpoint(run_dir):
    return list_checkpoints(str(run_dir))[-1][1]


# ---------------------------------------------------------------------------
# sample --ckpt: every solver, two presets.


@pytest.mark.parametrize("solver", samplers.names())
@pytest.mark.parametrize("which", ["flow", "vp"])
def test_sample_ckpt_with_every_solver(which, solver, flow_run, vp_digits_run, tmp_path, capsys):
    run = flow_run if which == "flow" else vp_digits_run
    item_shape = (2,) if which == "flow" else (1, 8, 8)
    out = tmp_path / "s.npz"
    main(["sample", "--ckpt", run, "--solver", solver, "--steps", "5", "--n", "6", "--seed", "10", "--out", str(out)])
    stdout = capsys.readouterr().out
    assert f"with {which} + {solver}, 5 steps" in stdout
    with np.load(out) as archive:
        samples, seeds = archive["samples"], archive["seeds"]
    assert samples.shape == (6, *item_shape)
    assert np.isfinite(samples).all() and np.abs(samples).max() > 0
    assert seeds.tolist() == list(range(10, 16))
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG_SIGNATURE


def test_sample_ckpt_png_only_raw_weights_and_class(vp_digits_run, tmp_path, capsys):
    out = tmp_path / "grid.png"
    main(["sample", "--ckpt", vp_digits_run, "--no-ema", "--class", "3", "--steps", "4", "--n", "4", "--out", str(out)])
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert "raw weights" in capsys.readouterr().out
    line = one_line_error(["sample", "--ckpt", vp_digits_run, "--class", "10", "--out", str(tmp_path / "x.png")], capsys)
    assert "10" in line and "0..9" in line
    assert not (tmp_path / "x.png").exists()


def test_sample_depends_on_the_seed_not_the_batch(flow_run, tmp_path):
    main(["sample", "--ckpt", flow_run, "--steps", "6", "--seeds", "0-7", "--batch", "3", "--out", str(tmp_path / "a.npz")])
    main(["sample", "--ckpt", flow_run, "--steps", "6", "--seeds", "5", "--out", str(tmp_path / "b.npz")])
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        np.testing.assert_allclose(b["samples"][0], a["samples"][5], rtol=1e-6, atol=1e-7)


def test_cross_sampling_a_flow_model_with_edm_heun(flow_run, tmp_path, capsys):
    out = tmp_path / "cross.npz"
    main(["sample", "--ckpt", flow_run, "--preset", "edm", "--solver", "heun", "--discretization", "edm",
          "--steps", "8", "--n", "5", "--out", str(out)])
    assert "with edm + heun, 8 steps, 15 denoiser evaluations" in capsys.readouterr().out
    with np.load(out) as archive:
        assert archive["samples"].shape == (5, 2) and np.isfinite(archive["samples"]).all()

    # Both integrate the same probability-flow ODE of the same denoiser: with enough steps they agree,
    # although a coarse solve of the flow ODE does not (so the ODE is not trivial).
    denoiser, config, _, _, _ = load_trained(flow_run)
    assert config.preset == "flow"
    latents = torch.randn(100, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        own = samplers.sample(denoiser, latents, formulation=presets.get("flow"), solver="heun", num_steps=64)
        cross = samplers.sample(denoiser, latents, formulation=presets.get("edm"), solver="heun", num_steps=64, discretization="edm")
        coarse = samplers.sample(denoiser, latents, formulation=presets.get("flow"), solver="euler", num_steps=4)
    assert (own - cross).abs().max() < 0.05
    assert (own - coarse).abs().max() > 0.1


# ---------------------------------------------------------------------------
# Broken, foreign and malicious checkpoints: one line naming the file, nothing executed, nothing written.


class Foreign:
    def __init__(self):
        self.weights = [1.0, 2.0]


class Exploit:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_sample_with_a_truncated_latest_checkpoint(edm_copy, tmp_path, capsys):
    path = newest_checkpoint(edm_copy)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    before = snapshot(edm_copy)
    line = one_line_error(["sample", "--ckpt", str(edm_copy), "--out", str(tmp_path / "s.npz")], capsys)
    assert path in line
    assert not (tmp_path / "s.npz").exists() and not (tmp_path / "s.png").exists()
    assert snapshot(edm_copy) == before


def test_sample_with_a_foreign_pickle_as_latest_checkpoint(edm_copy, tmp_path, capsys):
    path = os.path.join(str(edm_copy), "checkpoints", "checkpoint-00000099.pt")
    torch.save({"format": "edm-space-checkpoint", "version": 1, "model": Foreign()}, path)
    line = one_line_error(["sample", "--ckpt", str(edm_copy), "--out", str(tmp_path / "s.npz")], capsys)
    assert path in line
    assert not (tmp_path / "s.npz").exists()


def test_a_malicious_checkpoint_never_executes(tmp_path, capsys):
    edm_copy = _train(tmp_path / "run", preset="edm")  # made in place, so that it can be resumed
    marker = tmp_path / "code-was-executed"
    path = os.path.join(str(edm_copy), "checkpoints", "checkpoint-00000099.pt")
    torch.save({"format": "edm-space-checkpoint", "version": 1, "step": 99, "model": Exploit(marker)}, path)
    before = snapshot(edm_copy)
    line = one_line_error(["sample", "--ckpt", str(edm_copy), "--out", str(tmp_path / "s.npz")], capsys)
    assert path in line and not marker.exists()
    # resuming that run refuses it too, and writes nothing
    line = one_line_error(["train", "--preset", "edm", "--data", "8gaussians", "--data-size", "256", *TINY_ARGS,
                           "--steps", "30", "--checkpoint-every", "10", "--log-every", "10", "--out", str(edm_copy)], capsys)
    assert path in line and not marker.exists()
    assert snapshot(edm_copy) == before


def test_a_checkpoint_missing_its_weights_is_a_one_line_error(edm_copy, tmp_path, capsys):
    path = newest_checkpoint(edm_copy)
    state = torch.load(path, weights_only=True)
    del state["ema"]
    torch.save(state, path)
    line = one_line_error(["sample", "--ckpt", str(edm_copy), "--out", str(tmp_path / "s.npz")], capsys)
    assert path in line or "ema" in line


def test_sample_from_a_directory_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    line = one_line_error(["sample", "--ckpt", str(tmp_path / "empty"), "--out", str(tmp_path / "s.npz")], capsys)
    assert "config.json" in line


# ---------------------------------------------------------------------------
# train: refused input leaves everything as it was.


def test_train_a_different_preset_into_an_existing_run(edm_copy, capsys):
    before = snapshot(edm_copy)
    line = one_line_error(["train", "--preset", "vp", "--data", "8gaussians", "--data-size", "256", *TINY_ARGS,
                           "--steps", "30", "--out", str(edm_copy)], capsys)
    assert "'edm'" in line and "'vp'" in line
    assert snapshot(edm_copy) == before


def test_train_with_other_settings_into_an_existing_run(edm_copy, capsys):
    before = snapshot(edm_copy)
    line = one_line_error(["train", "--preset", "edm", "--data", "moons", "--data-size", "256", *TINY_ARGS,
                           "--steps", "30", "--out", str(edm_copy)], capsys)
    assert "data" in line
    assert snapshot(edm_copy) == before


@pytest.mark.parametrize("how", ["trailing slash", "moved"])
def test_a_run_resumes_wherever_its_directory_now_is(tmp_path, how):
    run = _train(tmp_path / "run", preset="edm", steps=10, checkpoint_every=5)
    if how == "moved":
        run = str(shutil.move(run, tmp_path / "elsewhere"))
    else:
        run = run + os.sep
    config = dict(preset="edm", data="8gaussians", data_size=256, net="mlp", net_options=MLP, steps=20, batch=32,
                  warmup_images=320, checkpoint_every=5, log_every=10, out=run)
    summary = train(TrainConfig(**config), progress=False)
    assert summary["start_step"] == 10
    assert [step for step, _ in list_checkpoints(run)] == [15, 20]


def test_train_unet_on_two_dimensional_points(tmp_path, capsys):
    out = tmp_path / "run"
    line = one_line_error(["train", "--preset", "edm", "--data", "8gaussians", "--net", "unet", "--steps", "2", "--out", str(out)], capsys)
    assert "[2]" in line and "unet" in line
    assert not out.exists()


def test_train_unet_on_images_of_an_indivisible_size(tmp_path, capsys):
    np.savez(tmp_path / "odd.npz", x=np.random.default_rng(0).integers(0, 256, (4, 7, 7), dtype=np.uint8))
    out = tmp_path / "run"
    line = one_line_error(["train", "--data", str(tmp_path / "odd.npz"), "--net", "unet", "--net-option", "channels=8",
                           "--steps", "2", "--out", str(out)], capsys)
    assert "7x7" in line
    assert not out.exists()


SUFFIXES = [".npy", ".npz"]


def write_array(path, array):
    if str(path).endswith(".npy"):
        np.save(path, array)
    else:
        np.savez(path, x=array)
    return str(path)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_train_on_one_dimensional_data(tmp_path, capsys, suffix):
    data = write_array(tmp_path / f"flat{suffix}", np.arange(100, dtype=np.float32))
    out = tmp_path / "run"
    line = one_line_error(["train", "--data", data, "--steps", "2", "--out", str(out)], capsys)
    assert f"flat{suffix}" in line and "[100]" in line
    assert not out.exists()


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_train_on_data_with_a_nan(tmp_path, capsys, suffix):
    points = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    points[17, 1] = np.nan
    data = write_array(tmp_path / f"nan{suffix}", points)
    out = tmp_path / "run"
    line = one_line_error(["train", "--data", data, "--steps", "2", "--out", str(out)], capsys)
    assert f"nan{suffix}" in line and "non-finite" in line
    assert not out.exists()


def test_resuming_after_the_data_file_gained_a_nan(tmp_path, capsys):
    points = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    data = write_array(tmp_path / "points.npz", points)
    args = ["train", "--data", data, *TINY_ARGS, "--steps", "10", "--checkpoint-every", "5", "--log-every", "5"]
    main(args + ["--out", str(tmp_path / "run")])
    assert [step for step, _ in list_checkpoints(str(tmp_path / "run"))] == [5, 10]
    points[3, 0] = np.nan
    write_array(tmp_path / "points.npz", points)
    before = snapshot(tmp_path / "run")
    line = one_line_error(["train", "--data", data, *TINY_ARGS, "--steps", "20", "--checkpoint-every", "5",
                           "--log-every", "5", "--out", str(tmp_path / "run")], capsys)
    assert "non-finite" in line
    assert snapshot(tmp_path / "run") == before


def test_train_writes_the_options_to_config_json_and_what_the_data_gave_to_record_json(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 32)
    points = (rng.standard_normal((96, 2)) * [0.3, 0.7] + labels[:, None]).astype(np.float32)
    data = str(tmp_path / "blobs.npz")
    np.savez(data, x=points, labels=labels)
    out = tmp_path / "run"
    main(["train", "--data", data, "--conditional", *TINY_ARGS, "--steps", "4", "--checkpoint-every", "2", "--log-every", "2", "--out", str(out)])
    config = json.loads((out / "config.json").read_text())
    assert set(config) == {f.name for f in dataclasses.fields(TrainConfig)}  # the command's options, no derived key
    assert not set(config) & {"sigma_data", "item_shape", "num_classes", "latent_space"}
    assert (config["data"], config["conditional"], config["steps"], config["batch"], config["net_options"], config["warmup_images"]) == \
        (data, True, 4, 32, MLP, 320)
    record = json.loads((out / "record.json").read_text())
    pooled = points.astype(np.float64).ravel()  # sigma_data: the population std of every coordinate pooled
    assert record["sigma_data"] == round(float(np.sqrt(np.mean((pooled - pooled.mean()) ** 2))), 6)
    assert (record["item_shape"], record["num_classes"], record["step"]) == ([2], 3, 4)
    denoiser, run, item_shape, num_classes, _ = load_trained(str(out))  # loading reads the record
    assert denoiser.formulation.preconditioning.sigma_data == record["sigma_data"] == run.sigma_data
    assert (item_shape, num_classes) == ((2,), 3)


def test_train_on_an_empty_png_folder(tmp_path, capsys):
    folder = tmp_path / "pictures"
    folder.mkdir()
    out = tmp_path / "run"
    line = one_line_error(["train", "--data", str(folder), "--steps", "2", "--out", str(out)], capsys)
    assert "pictures" in line and ".png" in line
    assert not out.exists()


# ---------------------------------------------------------------------------
# The real command, in a fresh interpreter: one stderr line, exit code 2, no traceback.


def test_the_installed_command_prints_one_line_errors(edm_run, tmp_path):
    run = shutil.copytree(edm_run, tmp_path / "run")
    path = newest_checkpoint(run)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 3])
    before = snapshot(run)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("EDM_SPACE_DEBUG", None)
    base = [sys.executable, "-m", "edm_space.cli"]
    jobs = [
        subprocess.Popen(base + ["sample", "--ckpt", str(run), "--out", str(tmp_path / "s.npz")], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        subprocess.Popen(base + ["train", "--preset", "vp", "--out", str(run)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
    ]
    results = [job.communicate(timeout=120) + (job.returncode,) for job in jobs]
    for (stdout, stderr, code), needle in zip(results, [path, "'vp'"]):
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), stderr
        assert needle in lines[0] and "Traceback" not in stderr
    assert not (tmp_path / "s.npz").exists()
    assert snapshot(run) == before
