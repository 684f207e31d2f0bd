"""Every bad input and fault a user can meet with `edm-space train` / `sample`, and what it must leave behind.

A failed command prints ONE line on stderr starting with ``error: `` that names the
bad value (and what is allowed), exits non-zero, shows no traceback, leaves no new
file (temporary files included) and changes no file that existed before
(`helpers_cli.cli_error`). The positive cases next to them pin the behaviour the
fixes must keep: a resumed run, a conditional user data set, a preset's own options.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import presets
from conftest import F64, gaussian_denoiser, one_torch_thread
from edm_space import data
from edm_space.errors import ConfigError
from edm_space.metrics import log_likelihood
from edm_space.training import build_formulation, build_network, list_checkpoints, load_trained, read_log, read_run_config
from helpers_cli import (
    DEAD_PID,
    TINY_SAMPLE,
    TINY_TRAIN,
    assert_names,
    assert_tree_unchanged,
    cli_error,
    cli_ok,
    cli_run,
    cli_start,
    cli_subprocess,
    error_line,
    limit_memory,
    subprocess_env,
    temp_files,
    tree_state,
    wait_until,
)
from edm_space.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NOSPACE = ("No space left on device", "ENOSPC", "disk is full")


pytestmark = pytest.mark.usefixtures("one_thread", "no_debug_env")


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty working folder that is also the current directory, so a stray relative write shows up in it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 3-step edm run with checkpoints at steps 2 and 3, trained through the command line."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    with one_torch_thread():
        main(["train", *TINY_TRAIN, "--checkpoint-every", "2", "--out", str(run)])
    assert [step for step, _ in list_checkpoints(str(run))] == [2, 3]
    return run


@pytest.fixture
def run_copy(tiny_run, work):
    """A private copy of the tiny run inside the working folder."""
    return shutil.copytree(tiny_run, work / "run")


def checkpoint_steps(run) -> list:
    return [step for step, _ in list_checkpoints(str(run))]


# ---------------------------------------------------------------------------
# A run directory in use is locked; what a killed process left is cleaned up.


def test_second_train_on_a_run_dir_in_use_is_refused(tmp_path):
    run = tmp_path / "busy_run"
    args = ["train", *TINY_TRAIN, "--steps", "150", "--log-every", "10", "--out", run.name]
    first = cli_start(args, cwd=tmp_path, stderr_path=tmp_path / "first.err")
    try:
        # Once the first entry is logged the first process is mid-training; stopping it keeps it there.
        wait_until(lambda: (run / "log.jsonl").is_file() and (run / "log.jsonl").stat().st_size > 0, first)
        os.kill(first.pid, signal.SIGSTOP)
        try:
            second = cli_subprocess(args, cwd=tmp_path)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        first.wait(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert second.returncode != 0, "a second train on a run directory in use was not refused"
    assert_names(error_line(second.stderr), ["busy_run"])
    assert first.returncode == 0, (tmp_path / "first.err").read_text()[-2000:]
    assert [entry["step"] for entry in read_log(str(run))] == list(range(10, 151, 10))


@pytest.mark.parametrize("owner", ["pid", "pid-host"])
def test_lock_of_a_dead_process_is_taken_over(run_copy, capsys, owner):
    (run_copy / "lock").write_text(f"{DEAD_PID} {socket.gethostname()}\n" if owner == "pid-host" else f"{DEAD_PID}\n")
    cli_ok(["train", "--steps", "4", "--out", run_copy], capsys)
    assert checkpoint_steps(run_copy)[-1] == 4


def test_temp_files_of_a_killed_process_are_removed_on_the_next_start(run_copy, capsys):
    stale = [run_copy / "checkpoints" / f"checkpoint-00000004.pt.tmp-{DEAD_PID}", run_copy / ".tmp-k3x9q1.jsonl",
             run_copy / ".tmp-p0w2zz.npz"]
    for path in stale:
        path.write_bytes(b"half-written")
    cli_ok(["train", "--steps", "4", "--out", run_copy], capsys)
    assert temp_files(run_copy) == []
    assert checkpoint_steps(run_copy)[-1] == 4


def test_a_training_killed_mid_run_resumes_to_a_clean_run(tmp_path):
    run = tmp_path / "run"
    args = ["train", *TINY_TRAIN, "--steps", "100", "--log-every", "10", "--checkpoint-every", "20", "--out", run.name]
    first = cli_start(args, cwd=tmp_path, stderr_path=tmp_path / "first.err")
    try:
        wait_until(lambda: bool(list_checkpoints(str(run))), first)
    finally:
        first.kill()  # SIGKILL: no handler runs; a lock it held names a dead process now
        first.wait()
    (run / ".tmp-abc123.jsonl").write_bytes(b"{\"step\": 9")  # what a writer killed mid-write leaves
    second = cli_subprocess(args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert temp_files(run) == []
    assert [entry["step"] for entry in read_log(str(run))] == list(range(10, 101, 10))
    assert checkpoint_steps(run)[-1] == 100


# ---------------------------------------------------------------------------
# Divergence: the checkpoint named as good is good; an early divergence leaves nothing in the way.


def _loss_on_a_batch(run, state) -> torch.Tensor:
    """The run's training loss (EDM eq. 8) of the checkpoint's raw weights on 256 moons, sigma ~ p_train."""
    config = read_run_config(str(run))
    net = build_network(config, tuple(config.item_shape))
    net.load_state_dict(state["model"])
    generator = torch.Generator().manual_seed(0)
    x0 = data.load("moons", n=256, seed=1)
    formulation = build_formulation(config)
    sigma = formulation.sample_training_sigma(len(x0), generator)
    noise = torch.randn(x0.shape, generator=generator)
    with torch.no_grad():
        return formulation.loss(net, x0, sigma=sigma, noise=noise).mean()


def test_divergence_names_a_checkpoint_whose_weights_and_loss_are_finite(work, capsys):
    code, _, err = cli_run(["train", *TINY_TRAIN, "--steps", "30", "--lr", "1e6", "--warmup", "0",
                            "--checkpoint-every", "1", "--out", "run"], capsys)
    assert code != 0
    line = error_line(err)
    assert_names(line, [("nan", "inf")])
    named = re.search(r"(\S*checkpoint-\d+\.pt)", line)
    assert named, f"{line!r} names no checkpoint although checkpoints were written"
    state = torch.load(named.group(1), map_location="cpu", weights_only=True)
    for key in ("model", "ema"):
        assert all(bool(torch.isfinite(t).all()) for t in state[key].values()), f"{key} weights of {named.group(1)}"
    assert torch.isfinite(_loss_on_a_batch(work / "run", state)), f"{named.group(1)} has a non-finite loss"
    assert temp_files(work) == []


def test_divergence_before_the_first_checkpoint_leaves_nothing_in_the_way(work, capsys):
    cli_error(["train", *TINY_TRAIN, "--steps", "30", "--lr", "1e6", "--warmup", "0", "--out", "run"], capsys,
              names=[("nan", "inf")], roots=[work])
    cli_ok(["train", *TINY_TRAIN, "--out", "run"], capsys)  # the corrected command
    assert checkpoint_steps(work / "run") == [3]


# ---------------------------------------------------------------------------
# A failed sample leaves the previous outputs as they were.


@pytest.mark.parametrize("blocked", ["out.png", "out_trajectory.npz"])
def test_failed_sample_keeps_previous_outputs(work, capsys, blocked):
    (work / "out.npz").write_bytes(b"previous samples")
    if blocked != "out.png":
        (work / "out.png").write_bytes(b"previous picture")
    (work / blocked).mkdir()  # a folder where a file is to be written: the write fails
    cli_error(["sample", *TINY_SAMPLE, "--trajectory", "--out", "out.npz"], capsys, names=[blocked], roots=[work])


# ---------------------------------------------------------------------------
# Values and names that are not allowed.

TRAIN_BAD = [
    (["--preset-option", "sigma_data=abc"], ["sigma_data", "abc"]),
    (["--preset-option", "sigma_data=0"], ["sigma_data", "0"]),
    (["--preset-option", "sigma_data=-1"], ["sigma_data", "-1"]),
    (["--preset-option", "sigma_data=nan"], ["sigma_data", ("nan", "NaN")]),
    (["--preset-option", "nope=1"], ["'nope'", "sigma_data"]),
    (["--preset", "sd3", "--preset-option", "shift=inf"], ["shift", "inf"]),
    (["--preset", "ddpm", "--preset-option", "beta_end=2"], ["beta_end", "2"]),
    (["--preset", "ddpm", "--preset-option", "num_timesteps=0"], ["num_timesteps", "0"]),
    (["--preset", "iddpm", "--preset-option", "M=0"], [("'M'", "M =", "M=", "M must", "M is"), "0"]),
    (["--preset", "ve", "--preset-option", "sigma_min=5", "--preset-option", "sigma_max=1"], ["sigma_min", "sigma_max", "5", "1"]),
    (["--net-option", "width=-5"], ["width", "-5"]),
    (["--net-option", "width=abc"], ["width", "abc"]),
    (["--batch", "0"], ["batch", "0"]),
    (["--threads", "0"], ["threads", "0"]),
    (["--keep-checkpoints", "0"], [("keep-checkpoints", "keep_checkpoints"), "0"]),
    (["--preset", "nope"], ["'nope'", "edm", "sd3"]),
    (["--net", "nope"], ["'nope'", "mlp", "unet"]),
    (["--data", "nope"], ["'nope'", "moons"]),
]


@pytest.mark.parametrize("args, names", TRAIN_BAD, ids=[" ".join(a) for a, _ in TRAIN_BAD])
def test_train_refuses_a_bad_value_and_leaves_no_run_dir(work, capsys, args, names):
    cli_error(["train", *TINY_TRAIN, *args, "--out", "run"], capsys, names=names, roots=[work])


SAMPLE_BAD = [
    (["--churn", "nan"], ["churn", ("nan", "NaN")]),
    (["--s-noise", "nan"], [("s-noise", "s_noise"), ("nan", "NaN")]),
    (["--class", "3"], ["--class", "--ckpt"]),
    (["--seeds", "5-1"], ["5-1"]),
    (["--batch", "0"], ["batch", "0"]),
    (["--threads", "0"], ["threads", "0"]),
    (["--preset", "nope"], ["'nope'", "edm", "sd3"]),
    (["--solver", "nope"], ["'nope'", "heun", "euler"]),
    (["--discretization", "nope"], ["'nope'", "edm", "uniform-t"]),
    (["--data", "nope"], ["'nope'", "moons"]),
    (["--preset", "edm", "--preset-option", "sigma_data=abc"], ["sigma_data", "abc"]),
    (["--solver", "ddim", "--solver-option", "nope=1"], ["'nope'", "eta"]),
    (["--solver", "ddim", "--solver-option", "eta=abc"], ["eta", "abc"]),
]


@pytest.mark.parametrize("args, names", SAMPLE_BAD, ids=[" ".join(a) for a, _ in SAMPLE_BAD])
def test_sample_refuses_a_bad_value_and_writes_nothing(work, capsys, args, names):
    cli_error(["sample", *TINY_SAMPLE, *args, "--out", "s.npz"], capsys, names=names, roots=[work])


@pytest.mark.parametrize("args, names", [
    (["--class", "3"], ["class", "3"]),  # the model is unconditional
    (["--step", "7"], ["7", "2", "3"]),  # the available steps are named
])
def test_sample_ckpt_refuses_a_bad_value(run_copy, work, capsys, args, names):
    cli_error(["sample", "--ckpt", run_copy, "--n", "4", "--steps", "2", *args, "--out", "s.npz"], capsys,
              names=names, roots=[work])


def test_train_refuses_fewer_steps_than_the_run_has(run_copy, work, capsys):
    cli_error(["train", "--steps", "2", "--out", run_copy], capsys, names=["2", "3"], roots=[work])


def test_sample_refuses_a_checkpoint_of_another_network(run_copy, work, capsys):
    other = work / "wide"
    cli_ok(["train", *TINY_TRAIN, "--net-option", "width=32", "--out", other], capsys)
    shutil.copy(list_checkpoints(str(other))[-1][1], run_copy / "checkpoints" / "checkpoint-00000009.pt")
    cli_error(["sample", "--ckpt", run_copy, "--n", "4", "--steps", "2", "--out", "s.npz"], capsys,
              names=["checkpoint-00000009.pt"], roots=[work])


@pytest.mark.parametrize("sigmas, problem", [
    ([2.0, 5.0, 1.0], "decreasing"),
    ([5.0, float("nan"), 1.0], ("nan", "NaN")),
    ([], "empty"),
], ids=["not-decreasing", "nan", "empty"])
def test_sample_refuses_bad_explicit_sigma_levels(work, capsys, sigmas, problem):
    (work / "levels.json").write_text(json.dumps({"sigmas": sigmas}))  # json writes NaN as the literal NaN
    cli_error(["sample", *TINY_SAMPLE, "--discretization", "levels.json", "--out", "s.npz"], capsys,
              names=["levels.json", problem], roots=[work])


@pytest.mark.parametrize("array, problem", [
    (np.zeros((5, 0), dtype=np.float32), "[5, 0]"),
    (np.full((8, 2), 1e300, dtype=np.float64), ("float32", "overflow")),
    (np.where(np.arange(16).reshape(8, 2) == 5, 1e39, 0.5), ("float32", "overflow")),  # just past float32's largest
], ids=["no-features", "overflows-float32", "one-value-just-past-float32"])
def test_train_refuses_a_bad_data_file(work, capsys, array, problem):
    np.save(work / "points.npy", array)
    cli_error(["train", *TINY_TRAIN, "--data", "points.npy", "--data-size", "5", "--out", "run"], capsys,
              names=["points.npy", problem], roots=[work])


IMPOSSIBLE_CONSTANTS = [
    ("edm", {"sigma_data": -1}, ["sigma_data", "-1"]),
    ("edm", {"sigma_data": 0}, ["sigma_data", "0"]),
    ("edm", {"sigma_data": math.nan}, ["sigma_data", "nan"]),
    ("ve", {"sigma_min": 5, "sigma_max": 1}, ["sigma_min", "sigma_max"]),
    ("sd3", {"shift": math.inf}, ["shift", "inf"]),
    ("ddpm", {"beta_end": 2}, ["beta_end", "2"]),
    ("ddpm", {"num_timesteps": 0}, ["num_timesteps", "0"]),
    ("iddpm", {"M": 0}, [("'M'", "M =", "M=", "M must", "M is"), "0"]),
]


@pytest.mark.parametrize("name, options, names", IMPOSSIBLE_CONSTANTS,
                         ids=[f"{n} {' '.join(f'{k}={v}' for k, v in o.items())}" for n, o, _ in IMPOSSIBLE_CONSTANTS])
def test_presets_get_refuses_impossible_constants(name, options, names):
    with pytest.raises(ConfigError) as refused:
        presets.get(name, **options)
    message = str(refused.value)
    assert "\n" not in message
    assert_names(message, names)


# Plug-in options outside the bounds declared next to each plug-in: refused before any data is read or anything
# built, with no run directory left behind.
PLUGIN_OPTIONS_BAD = [
    (["autoencoder", "train", "--kind", "kl", "--option", "channels=0"], ["channels", "0"]),
    (["autoencoder", "train", "--kind", "kl", "--option", "blocks=-1"], ["blocks", "-1"]),
    (["autoencoder", "train", "--kind", "vq", "--option", "num_codes=2.5"], ["num_codes", "2.5"]),
    (["autoencoder", "train", "--kind", "kl", "--option", "beta=nan"], ["beta", "nan"]),
    (["autoencoder", "train", "--kind", "vq", "--option", "ema=maybe"], ["ema", "maybe"]),
    (["train", "--family", "nice", "--family-option", "width=0"], ["width", "0"]),
    (["train", "--family", "gan", "--family-option", "channels=0"], ["channels", "0"]),
    (["train", "--family", "pixelcnn", "--family-option", "channels=0"], ["channels", "0"]),
    (["train", "--family", "gan", "--family-option", "latent_dim=0"], ["latent_dim", "0"]),
    (["train", "--net", "dit", "--net-option", "mlp_ratio=0"], ["mlp_ratio", "0"]),
]


@pytest.mark.parametrize("args, names", PLUGIN_OPTIONS_BAD, ids=[" ".join(a) for a, _ in PLUGIN_OPTIONS_BAD])
def test_plugin_options_out_of_bounds_are_refused_before_any_work(work, capsys, args, names):
    cli_error([*args, "--data", "digits", "--steps", "1", "--out", "run"], capsys, names=names, roots=[work])


@pytest.mark.parametrize("args, names", [
    (["--latent", "ae"], ["--latent", "--family"]),
    (["--precision", "bf16"], ["--precision", "--family"]),
], ids=["latent", "precision"])
def test_train_family_refuses_diffusion_options(work, capsys, args, names):
    cli_error(["train", "--family", "nice", "--data", "digits", "--steps", "1", *args, "--out", "run"], capsys, names=names, roots=[work])


@pytest.fixture(scope="module")
def family_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("family") / "nice"
    with one_torch_thread():
        main(["train", "--family", "nice", "--data", "digits", "--data-size", "64", "--family-option", "couplings=1",
              "--family-option", "width=8", "--family-option", "depth=1", "--steps", "2", "--batch", "8", "--out", str(run)])
    return run


@pytest.mark.parametrize("command", [["train", *TINY_TRAIN, "--out"], ["optimize-steps", "--solver", "euler", "--nfe", "4", "--out", "s.json", "--ckpt"]],
                         ids=["train-without-family", "optimize-steps"])
def test_a_family_run_given_to_a_diffusion_command_names_its_kind(family_run, work, capsys, command):
    before = tree_state(family_run)
    line = cli_error([*command, str(family_run)], capsys, names=["nice family run", "--family nice"], roots=[work])
    assert "unknown fields" not in line
    assert_tree_unchanged(before, family_run)


def test_a_streamed_png_folder_whose_files_vanish_mid_run_is_one_line(work, capsys, monkeypatch):
    from PIL import Image

    from edm_space import training

    folder = work / "pngs"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(np.full((8, 8), 20 * i, dtype=np.uint8), mode="L").save(folder / f"{i:02d}.png")
    read_once = training.streamed_sigma_data

    def then_remove_the_images(dataset):  # the run has read the folder once; now its files vanish
        sigma = read_once(dataset)
        for name in os.listdir(folder):
            os.unlink(folder / name)
        return sigma

    monkeypatch.setattr(training, "streamed_sigma_data", then_remove_the_images)
    line = cli_error(["train", "--data", str(folder), "--stream-data", "--workers", "1", "--net", "unet", "--net-option", "channels=8",
                      "--net-option", "channel_mult=[1]", "--steps", "2", "--batch", "4", "--out", "run"], capsys, names=["cannot read image", ".png"])
    assert "Traceback" not in line and "worker" not in line


def test_autoencoder_eval_bounds_the_iwae_samples(work, capsys):
    cli_error(["autoencoder", "eval", "--ckpt", "nowhere", "--iwae-samples", "1000000000"], capsys,
              names=["--iwae-samples", "1000000000", "10,000"], roots=[work])


# ---------------------------------------------------------------------------
# Output paths and full disks.


def test_sample_out_in_a_missing_folder_creates_it(work, capsys):
    cli_ok(["sample", *TINY_SAMPLE, "--out", "missing_dir/deeper/s.npz"], capsys)
    with np.load(work / "missing_dir" / "deeper" / "s.npz") as out:
        assert out["samples"].shape == (4, 2)
    # a command refused for another reason creates no folder
    cli_error(["sample", *TINY_SAMPLE, "--batch", "0", "--out", "other_dir/s.npz"], capsys, names=["--batch"], roots=[work])


def test_sample_out_below_a_regular_file(work, capsys):
    (work / "somefile.txt").write_text("not a folder\n")
    cli_error(["sample", *TINY_SAMPLE, "--out", "somefile.txt/s.npz"], capsys, names=["somefile.txt"], roots=[work])


def test_sample_out_in_a_read_only_folder(work, capsys, monkeypatch):
    folder = work / "readonly_dir"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        # root writes into a mode-555 folder anyway; make the access check answer as it does for other users
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if os.path.abspath(path) == str(folder) and mode & os.W_OK else real_access(path, mode, **kw))
    try:
        cli_error(["sample", *TINY_SAMPLE, "--out", "readonly_dir/s.npz"], capsys, names=["readonly_dir"], roots=[work])
    finally:
        folder.chmod(0o755)


def test_train_out_that_is_a_regular_file(work, capsys):
    (work / "notadir").write_text("keep me\n")
    cli_error(["train", *TINY_TRAIN, "--out", "notadir"], capsys, names=["notadir"], roots=[work])


def _fsync_fails_for(monkeypatch, fragment: str) -> None:
    """os.fsync raises ENOSPC for files whose name contains `fragment`, as on a full disk."""
    real_fsync = os.fsync

    def fsync(fd):
        if fragment in os.path.basename(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_full_disk_while_writing_samples(work, capsys, monkeypatch):
    (work / "s.npz").write_bytes(b"previous samples")
    _fsync_fails_for(monkeypatch, "")
    cli_error(["sample", *TINY_SAMPLE, "--out", "s.npz"], capsys, names=["s.npz", NOSPACE], roots=[work])


def test_full_disk_while_writing_a_checkpoint(run_copy, work, capsys, monkeypatch):
    _fsync_fails_for(monkeypatch, ".pt")  # checkpoint-00000004.pt and any temporary name it is written under
    cli_error(["train", "--steps", "4", "--out", run_copy], capsys, names=[NOSPACE], roots=[work])


def test_stdout_on_a_full_device(work):
    (work / "keep.txt").write_text("unrelated\n")
    before = tree_state(work)
    with open("/dev/full", "w") as full:
        result = cli_subprocess(["sample", *TINY_SAMPLE, "--out", "s.npz"], cwd=work, stdout=full)
    assert result.returncode != 0
    assert_names(error_line(result.stderr), [NOSPACE + ("stdout",)])
    after = tree_state(work)
    assert {k: v for k, v in after.items() if k in before} == before  # previous files intact
    assert temp_files(work) == []


# ---------------------------------------------------------------------------
# Absurd sizes are refused before anything is allocated. The child's address space is capped at 3 GiB so
# that a missing check fails with MemoryError instead of exhausting the machine; the timeout is a guard.

ABSURD = [
    (["train", *TINY_TRAIN, "--steps", "1000000000000", "--out", "run"], ("1000000000000", "1e+12", "1e12")),
    (["train", *TINY_TRAIN, "--data-size", "10000000000", "--out", "run"], ("10000000000", "1e+10", "1e10")),
    (["sample", *TINY_SAMPLE, "--n", "10000000000", "--out", "s.npz"], ("10000000000", "1e+10", "1e10")),
    (["sample", "--data-size", "50", "--n", "4", "--steps", "1000000000000", "--out", "s.npz"], ("1000000000000",)),
    (["sample", "--data-size", "50", "--n", "4", "--steps", "100000000000000000000", "--out", "s.npz"], ("100000000000000000000",)),
]


@pytest.mark.parametrize("args, value", ABSURD, ids=["train-steps", "train-data-size", "sample-n", "sample-steps-1e12", "sample-steps-1e20"])
def test_absurd_sizes_are_refused_before_allocating(work, args, value):
    before = tree_state(work)
    try:
        result = cli_subprocess(args, cwd=work, timeout=60, preexec_fn=limit_memory())
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(args[:1] + args[-4:])} was not refused; it was still running after 60 s")
    assert result.returncode != 0
    assert_names(error_line(result.stderr), [value])
    assert_tree_unchanged(before, work)


def test_data_load_refuses_an_absurd_size():
    script = ("import sys\nfrom edm_space import data\nfrom edm_space.errors import ConfigError\n"
              "try:\n    data.load('moons', n=10**10)\nexcept ConfigError as error:\n    print(error)\n    sys.exit(3)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=subprocess_env(),
                            timeout=60, preexec_fn=limit_memory())
    assert result.returncode == 3, result.stderr[-2000:]
    assert "10000000000" in result.stdout


# ---------------------------------------------------------------------------
# What must keep working.


@pytest.mark.parametrize("label_key", ["labels", "y"])
def test_conditional_training_on_a_user_npz_with_labels(work, capsys, label_key):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 32)
    centres = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, 0.5]], dtype=np.float32)
    x = (centres[labels] + 0.05 * rng.standard_normal((len(labels), 2))).astype(np.float32)
    np.savez(work / "blobs.npz", x=x, **{label_key: labels})
    cli_ok(["train", "--data", "blobs.npz", "--conditional", "--net-option", "width=16", "--net-option", "depth=1",
            "--steps", "3", "--batch", "16", "--out", "run"], capsys)
    assert read_run_config(str(work / "run")).num_classes == 3
    cli_ok(["sample", "--ckpt", "run", "--class", "1", "--n", "4", "--steps", "2", "--out", "s.npz"], capsys)
    with np.load(work / "s.npz") as archive:
        assert archive["samples"].shape == (4, 2) and np.isfinite(archive["samples"]).all()
    cli_error(["sample", "--ckpt", "run", "--class", "3", "--n", "4", "--steps", "2", "--out", "t.npz"], capsys,
              names=["3", "0..2"], roots=[work])


def test_sample_the_digits_with_the_defaults(work, capsys):
    cli_ok(["sample", "--data", "digits", "--n", "4", "--out", "d.npz"], capsys)
    with np.load(work / "d.npz") as archive:
        assert archive["samples"].shape == (4, 1, 8, 8) and np.isfinite(archive["samples"]).all()
    assert (work / "d.png").read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.parametrize("which", ["gaussian", "trained"])
def test_log_likelihood_inside_no_grad(tiny_run, which):
    c, sigma_min, sigma_max = 0.5, 1e-2, 20.0
    x = c * torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    if which == "gaussian":
        denoiser = gaussian_denoiser(torch.zeros(2, dtype=F64), c)
    else:
        denoiser = load_trained(str(tiny_run))[0]
    options = dict(sigma_min=sigma_min, sigma_max=sigma_max, num_steps=48, prior_std=math.sqrt(c**2 + sigma_max**2))
    outside = log_likelihood(denoiser, x, **options)["log_p"]
    with torch.no_grad():
        inside = log_likelihood(denoiser, x, **options)["log_p"]
    torch.testing.assert_close(inside, outside, rtol=0, atol=1e-6)
    if which == "gaussian":
        # N(0, c^2) data seen through sigma_min noise is N(0, (c^2 + sigma_min^2) I): the exact log-density.
        var = c**2 + sigma_min**2
        exact = -0.5 * (x**2).sum(dim=1) / var - math.log(2 * math.pi * var)
        torch.testing.assert_close(outside, exact, rtol=0, atol=2e-4)  # RK4 error at 48 steps: about 6e-5


@pytest.mark.parametrize("source", ["trained-with-shift", "preset-option"])
def test_sd3_shift_sets_the_sampling_time_grid(work, capsys, source):
    common = ["--solver", "euler", "--steps", "10", "--n", "4", "--trajectory", "--out", "s.npz"]
    if source == "trained-with-shift":
        cli_ok(["train", *TINY_TRAIN, "--preset", "sd3", "--preset-option", "shift=3", "--out", "run"], capsys)
        cli_ok(["sample", "--ckpt", "run", *common], capsys)
    else:
        cli_ok(["sample", "--preset", "sd3", "--preset-option", "shift=3", "--data-size", "50", *common], capsys)
    with np.load(work / "s_trajectory.npz") as trajectory:
        t, sigma = trajectory["t"], trajectory["sigma"]
    # SD3 (Esser et al. 2024, eq. 23): t' = a t / (1 + (a - 1) t) on the uniform grid t = 1, 0.9, ..., 0.1, a = 3.
    u = 1 - np.arange(10) / 10
    shifted = 3 * u / (1 + 2 * u)
    assert t.shape == (10,)
    np.testing.assert_allclose(t[0], 1.0, atol=1e-8)  # t = 1 itself is started at sigma = 1e9
    np.testing.assert_allclose(t[1:], shifted[1:], rtol=0, atol=1e-12)
    np.testing.assert_allclose(sigma[1:], shifted[1:] / (1 - shifted[1:]), rtol=1e-9)  # flow: sigma = t / (1 - t)


def test_config_json_holds_the_steps_trained(run_copy, capsys):
    cli_ok(["train", "--steps", "5", "--out", run_copy], capsys)
    assert json.loads((run_copy / "config.json").read_text())["steps"] == 5
    assert checkpoint_steps(run_copy)[-1] == 5


def test_sample_a_chosen_checkpoint(run_copy, work, capsys):
    base = ["--n", "4", "--steps", "2"]
    cli_ok(["sample", "--ckpt", run_copy, "--step", "2", *base, "--out", "by_step.npz"], capsys)
    cli_ok(["sample", "--ckpt", run_copy / "checkpoints" / "checkpoint-00000002.pt", *base, "--out", "by_path.npz"], capsys)
    cli_ok(["sample", "--ckpt", run_copy, *base, "--out", "newest.npz"], capsys)
    with np.load("by_step.npz") as by_step, np.load("by_path.npz") as by_path, np.load("newest.npz") as newest:
        np.testing.assert_array_equal(by_step["samples"], by_path["samples"])
        assert not np.allclose(by_step["samples"], newest["samples"])  # step 3's weights differ from step 2's


def test_keep_checkpoints(work, capsys):
    cli_ok(["train", *TINY_TRAIN, "--checkpoint-every", "1", "--keep-checkpoints", "1", "--out", "run"], capsys)
    assert checkpoint_steps(work / "run") == [3]


def test_solver_options_reach_the_solver(work, capsys):
    base = ["sample", *TINY_SAMPLE, "--steps", "4", "--solver", "ddim"]
    cli_ok([*base, "--out", "plain.npz"], capsys)
    cli_ok([*base, "--solver-option", "eta=0", "--out", "eta0.npz"], capsys)
    cli_ok([*base, "--solver-option", "eta=0.5", "--out", "eta05.npz"], capsys)
    with np.load("plain.npz") as plain, np.load("eta0.npz") as eta0, np.load("eta05.npz") as eta05:
        np.testing.assert_array_equal(plain["samples"], eta0["samples"])  # ddim's default eta is 0
        assert not np.allclose(eta0["samples"], eta05["samples"])


# ---------------------------------------------------------------------------
# Sampling faults.


def test_non_finite_latents_are_refused_naming_the_rows():
    import samplers

    latents = torch.zeros(5, 2, dtype=F64)
    latents[1, 0], latents[3] = math.nan, math.inf
    with pytest.raises(ConfigError, match=r"non-finite .* 2 of 5 rows: 1, 3$"):
        samplers.sample(lambda x, sigma: x * 0, latents, solver="euler", num_steps=2)
    with pytest.raises(ConfigError, match="5 of 5 rows"):
        samplers.sample(lambda x, sigma: x * 0, torch.full((5, 2), math.nan, dtype=F64), solver="euler", num_steps=2)


def test_a_sample_killed_while_writing_leaves_no_temporaries_that_accumulate(work, capsys):
    """A real SIGKILL between writing the temporary and renaming it over the previous good file; the next
    sample into that folder removes what the killed one left."""
    cli_ok(["sample", *TINY_SAMPLE, "--out", "s.npz"], capsys)
    good = (work / "s.npz").read_bytes()
    stall = ("import os, sys, time\n"
             "def stall(a, b):\n"
             "    open('renaming', 'w').close()\n"
             "    time.sleep(120)\n"
             "os.replace = stall\n"
             "from edm_space.cli import main\n"
             "main(sys.argv[1:])\n")
    for _ in range(2):
        child = subprocess.Popen([sys.executable, "-c", stall, "sample", *TINY_SAMPLE, "--seed", "9", "--out", "s.npz"],
                                 cwd=work, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: (work / "renaming").exists(), child, timeout=120)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        (work / "renaming").unlink()
        assert len(temp_files(work)) == 1  # what the killed writer left; the second one removed the first one's
    assert (work / "s.npz").read_bytes() == good  # the previous file survives the kills
    cli_ok(["sample", *TINY_SAMPLE, "--out", "s.npz"], capsys)
    assert temp_files(work) == []


def test_a_running_writers_temporaries_are_kept(work):
    from edm_space.files import remove_stale_temporaries

    mine = work / f".tmp-{os.getpid()}-abc-s.npz"
    dead = work / f".tmp-{DEAD_PID}-abc-s.npz"
    for path in (mine, dead):
        path.write_bytes(b"partial")
    assert remove_stale_temporaries(work) == [str(dead)]
    assert mine.exists() and not dead.exists()


def test_presets_with_stdout_on_a_full_device(work):
    with open("/dev/full", "w") as full:
        result = cli_subprocess(["presets"], cwd=work, stdout=full)
    assert result.returncode != 0
    assert_names(error_line(result.stderr), [NOSPACE])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_a_device_without_a_checkpoint_is_refused(work, capsys):
    cli_error(["sample", *TINY_SAMPLE, "--device", "cuda", "--out", "s.npz"], capsys, names=["--device cuda", "--ckpt"], roots=[work])


def test_sample_compile_with_a_broken_compiler_is_one_line(run_copy, work, capsys, monkeypatch):
    def broken(network):
        def call(*args, **kwargs):
            raise RuntimeError("InductorError: backend exploded\nwith a second line")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    cli_error(["sample", "--ckpt", run_copy, "--n", "2", "--steps", "2", "--compile", "--out", "s.npz"], capsys,
              names=["--compile", "compiler"], roots=[work])
