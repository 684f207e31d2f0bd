"""Devices, precision, compilation and sampling spread over processes, as far as a CPU machine can check them.

CUDA itself is exercised by benchmarks/gpu_check.py on a GPU; here: the device errors a user meets
without one, bf16 autocast on the CPU (close to fp32, finite, resumable bit for bit), fp16 refused on
the CPU, torch.compile against eager, checkpoints loading on a named device, and torchrun sampling
with two gloo processes writing exactly what one process writes.
"""

import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from edm_space import devices
from edm_space.cli import main
from edm_space.errors import ConfigError
from edm_space.training import TrainConfig, list_checkpoints, load_checkpoint, load_trained, read_log, train
from test_training import assert_same_training_state, free_port, subprocess_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_thread", "no_debug_env")


def digits_config(out, **overrides) -> TrainConfig:
    settings = dict(data="digits", data_size=256, net="unet", net_options={"channels": 8, "channel_mult": [1, 2], "blocks_per_level": 1},
                    steps=8, batch=16, warmup_images=0, lr=2e-3, checkpoint_every=4, log_every=1, out=str(out))
    settings.update(overrides)
    return TrainConfig(**settings)


# ---------------------------------------------------------------------------
# Device names.


def test_cpu_and_auto_resolve_to_the_cpu_here():
    assert devices.resolve_device("cpu") == torch.device("cpu")
    assert devices.resolve_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:7"])
def test_cuda_without_cuda_is_one_line_naming_the_device_and_what_exists(tmp_path, capsys, name):
    with pytest.raises(SystemExit) as done:
        main(["train", "--data", "moons", "--steps", "2", "--device", name, "--out", str(tmp_path / "run")])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--device {name}" in err and "available: cpu" in err
    assert not (tmp_path / "run").exists()


def test_a_gpu_index_beyond_the_machine_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert devices.resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match=r"cuda:7 does not exist; this machine has 1 GPU\(s\): cuda:0\.\.cuda:0"):
        devices.resolve_device("cuda:7")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert devices.resolve_device("auto") == torch.device("cuda", 0)  # torchrun: the GPU of LOCAL_RANK


@pytest.mark.parametrize("name", ["gpu", "cuda:x", ""])
def test_unknown_device_names_list_the_valid_ones(name):
    with pytest.raises(ConfigError, match="valid: auto, cpu, cuda, cuda:N, mps|cuda:N with N an integer|needs CUDA"):
        devices.resolve_device(name)


def test_explicit_cpu_device_trains_like_the_default(tmp_path):
    train(digits_config(tmp_path / "a"), progress=False, device="cpu")
    train(digits_config(tmp_path / "b"), progress=False)
    assert [e["loss"] for e in read_log(str(tmp_path / "a"))] == [e["loss"] for e in read_log(str(tmp_path / "b"))]


# ---------------------------------------------------------------------------
# Precision.


def test_bf16_losses_are_close_to_fp32_and_finite(tmp_path):
    train(digits_config(tmp_path / "fp32"), progress=False, precision="fp32")
    train(digits_config(tmp_path / "bf16"), progress=False, precision="bf16")
    fp32 = [e["loss"] for e in read_log(str(tmp_path / "fp32"))]
    bf16 = [e["loss"] for e in read_log(str(tmp_path / "bf16"))]
    assert all(math.isfinite(v) for v in bf16)
    # bfloat16 keeps 8 bits of mantissa: relative differences of a few 1e-3 per step, growing slowly.
    for a, b in zip(fp32[:4], bf16[:4]):
        assert abs(a - b) / a < 3e-2
    assert fp32 != bf16  # autocast did change the arithmetic
    # weights and EMA stay float32
    state = load_checkpoint(list_checkpoints(str(tmp_path / "bf16"))[-1][1])
    assert all(t.dtype == torch.float32 for t in state["model"].values() if t.is_floating_point())


def test_a_bf16_checkpoint_resumes_bit_exactly(tmp_path):
    train(digits_config(tmp_path / "whole"), progress=False, precision="bf16")
    train(digits_config(tmp_path / "split", steps=4), progress=False, precision="bf16")
    train(digits_config(tmp_path / "split"), progress=False, precision="bf16")
    whole = load_checkpoint(list_checkpoints(str(tmp_path / "whole"))[-1][1])
    split = load_checkpoint(list_checkpoints(str(tmp_path / "split"))[-1][1])
    assert_same_training_state(whole, split)


def test_fp16_on_the_cpu_is_refused_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "--data", "moons", "--steps", "2", "--device", "cpu", "--precision", "fp16", "--out", str(tmp_path / "run")])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fp16 needs a GPU" in err and "bf16" in err
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_loads_with_another_device_string(tmp_path):
    train(digits_config(tmp_path / "run", steps=4), progress=False, device="auto")
    for name in ("cpu", "auto"):
        denoiser, *_ = load_trained(str(tmp_path / "run"), device=name)
        assert next(denoiser.network.parameters()).device == devices.resolve_device(name)


def test_bf16_sampling_is_close_to_fp32(tmp_path, capsys):
    train(digits_config(tmp_path / "run", steps=4), progress=False)
    base = ["sample", "--ckpt", str(tmp_path / "run"), "--n", "4", "--steps", "6", "--device", "cpu"]
    main([*base, "--out", str(tmp_path / "fp32.npz")])
    main([*base, "--precision", "bf16", "--out", str(tmp_path / "bf16.npz")])
    main([*base, "--sampler-dtype", "float32", "--out", str(tmp_path / "f32state.npz")])
    a, b, c = (np.load(tmp_path / f"{name}.npz")["samples"] for name in ("fp32", "bf16", "f32state"))
    assert 0 < np.abs(a - b).max() < 0.1  # bf16 changes the network's arithmetic, not the result's scale
    assert np.abs(a - c).max() < 1e-4  # a float32 state only adds round-off


# ---------------------------------------------------------------------------
# torch.compile.


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="torch.compile on the CPU needs a C compiler, and this machine has none")
def test_compiled_training_matches_eager(tmp_path):
    config = dict(data="moons", data_size=256, net="mlp", net_options={"width": 16, "depth": 1}, steps=3, batch=16,
                  warmup_images=0, checkpoint_every=3, log_every=1)
    train(TrainConfig(out=str(tmp_path / "eager"), **config), progress=False)
    train(TrainConfig(out=str(tmp_path / "compiled"), **config), progress=False, compile=True)
    eager = [e["loss"] for e in read_log(str(tmp_path / "eager"))]
    compiled = [e["loss"] for e in read_log(str(tmp_path / "compiled"))]
    assert np.allclose(eager, compiled, rtol=1e-4, atol=1e-6)


def test_a_compiler_that_fails_is_one_line(tmp_path, monkeypatch):
    def broken(network):
        def call(*args, **kwargs):
            raise RuntimeError("backend exploded\nwith a second line")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(ConfigError, match="--compile: no working compiler backend") as error:
        train(digits_config(tmp_path / "run", steps=2), progress=False, compile=True)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------
# Sampling over processes.


def test_two_processes_under_torchrun_sample_the_file_one_process_writes(tmp_path):
    train(TrainConfig(data="moons", data_size=256, net="mlp", net_options={"width": 16, "depth": 1}, steps=4, batch=16,
                      checkpoint_every=4, out=str(tmp_path / "run")), progress=False)
    # 25 seeds in batches of 7 do not split evenly over 2 processes: the batches {0-6, 7-13} and {14-20, 21-24} are
    # dealt whole, so each process evaluates exactly the batches one process evaluates and the files agree bit for bit
    # on any CPU (not only where the float32 network happens to be batch-invariant).
    args = ["sample", "--ckpt", str(tmp_path / "run"), "--seeds", "0-24", "--batch", "7", "--steps", "6", "--threads", "1"]
    main([*args, "--out", str(tmp_path / "one.npz")])
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
         "-m", "edm_space.cli", *args, "--out", str(tmp_path / "two.npz")],
        capture_output=True, text=True, env=subprocess_env(), cwd=str(tmp_path), timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert "over 2 processes" in two.stdout
    one, both = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert np.array_equal(one["seeds"], both["seeds"]) and np.array_equal(one["samples"], both["samples"])


# ---------------------------------------------------------------------------
# Streaming a PNG folder.


def test_streaming_a_png_folder_trains_exactly_like_holding_it_in_memory(tmp_path):
    from PIL import Image

    from edm_space.data import load

    digits = ((load("digits", n=60, seed=3).numpy()[:, 0] + 1) * 127.5).round().astype(np.uint8)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(digits):
        Image.fromarray(image, mode="L").save(folder / f"{i:03d}.png")
    config = dict(data=str(folder), data_size=50, net="unet", net_options={"channels": 8, "channel_mult": [1, 2], "blocks_per_level": 1},
                  steps=6, batch=8, warmup_images=0, checkpoint_every=3, log_every=1)
    train(TrainConfig(out=str(tmp_path / "memory"), **config), progress=False)
    train(TrainConfig(out=str(tmp_path / "stream0"), **config), progress=False, stream_data=True, workers=0)
    train(TrainConfig(out=str(tmp_path / "stream2"), **{**config, "steps": 3}), progress=False, stream_data=True, workers=2)
    train(TrainConfig(out=str(tmp_path / "stream2"), **config), progress=False, stream_data=True, workers=2)  # resumed
    memory = load_checkpoint(list_checkpoints(str(tmp_path / "memory"))[-1][1])
    for name in ("stream0", "stream2"):
        assert_same_training_state(memory, load_checkpoint(list_checkpoints(str(tmp_path / name))[-1][1]))
