"""The training loop: determinism, resume after SIGKILL, crash-safe checkpoints, torchrun, divergence, learning."""

import copy
import io
import math
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import presets
import samplers
from edm_space import training
from edm_space.errors import ConfigError
from edm_space.networks.mlp import MLP
from edm_space.training import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    TrainConfig,
    TrainingDiverged,
    list_checkpoints,
    load_checkpoint,
    load_trained,
    read_log,
    train,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(out, **overrides) -> TrainConfig:
    """A run small enough for 2 shared cores: a 2-block, 32-wide MLP on 256 points of 8gaussians."""
    settings = dict(
        preset="edm", data="8gaussians", data_size=256, net="mlp", net_options={"width": 32, "depth": 2},
        steps=40, batch=32, warmup_images=320, checkpoint_every=10, log_every=10, out=str(out),
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def final_state(run_dir):
    step, path = list_checkpoints(str(run_dir))[-1]
    return step, load_checkpoint(path)


def assert_identical(a, b, where="state"):
    """Recursive bit-for-bit equality of two checkpoint payloads (tensors with torch.equal)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs (max |diff| {float((a.double() - b.double()).abs().max())})"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_training_state(a, b):
    for part in ("model", "ema", "optimizer"):
        assert_identical(a[part], b[part], part)
    assert a["step"] == b["step"]



def subprocess_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("EDM_SPACE_DEBUG", None)
    return env


# ---------------------------------------------------------------------------
# Determinism.


def test_same_seed_and_config_give_bit_identical_weights(tmp_path):
    train(tiny(tmp_path / "a"), progress=False)
    train(tiny(tmp_path / "b"), progress=False)
    train(tiny(tmp_path / "c", seed=1), progress=False)
    step_a, a = final_state(tmp_path / "a")
    step_b, b = final_state(tmp_path / "b")
    assert step_a == step_b == 40
    assert_same_training_state(a, b)
    _, c = final_state(tmp_path / "c")
    assert not torch.equal(a["model"]["inp.weight"], c["model"]["inp.weight"])  # the seed matters
    # training moved the weights away from zero (the output layer starts at exactly 0)
    assert a["model"]["out.weight"].abs().max() > 0
    assert not torch.equal(a["model"]["out.weight"], a["ema"]["out.weight"])  # EMA is its own copy
    assert [e["loss"] for e in read_log(str(tmp_path / "a"))] == [e["loss"] for e in read_log(str(tmp_path / "b"))]


def test_training_leaves_the_callers_global_rng_and_config_alone(tmp_path):
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    config = tiny(tmp_path / "a", steps=4, checkpoint_every=4)
    given = copy.deepcopy(config)
    train(config, progress=False)
    assert torch.equal(torch.get_rng_state(), before)  # the global generator is where the caller left it
    assert config == given  # derived facts (sigma_data, item_shape) went to the run, not into the caller's object
    torch.manual_seed(99)  # another global state: the same weights, since the run seeds its own initialisation
    train(tiny(tmp_path / "b", steps=4, checkpoint_every=4), progress=False)
    assert_same_training_state(final_state(tmp_path / "a")[1], final_state(tmp_path / "b")[1])


def test_extending_a_finished_run_equals_training_longer_from_the_start(tmp_path):
    train(tiny(tmp_path / "long", steps=60), progress=False)
    summary = train(tiny(tmp_path / "short", steps=30), progress=False)
    assert summary["start_step"] == 0
    summary = train(tiny(tmp_path / "short", steps=60), progress=False)
    assert summary["start_step"] == 30  # resumed, not restarted
    assert_same_training_state(final_state(tmp_path / "long")[1], final_state(tmp_path / "short")[1])


# ---------------------------------------------------------------------------
# Resume after SIGKILL: the same final weights, model, EMA and optimizer, bit for bit.

KILL_ARGS = [
    "train", "--preset", "edm", "--data", "8gaussians", "--data-size", "256", "--net-option", "width=32",
    "--net-option", "depth=2", "--steps", "400", "--batch", "32", "--warmup", "320", "--checkpoint-every", "50",
    "--log-every", "25",
]


def test_sigkill_mid_run_then_resume_gives_bit_identical_weights(tmp_path):
    command = [sys.executable, "-m", "edm_space.cli", *KILL_ARGS]
    env = subprocess_env()
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    with open(tmp_path / "ref.err", "w") as ref_err, open(tmp_path / "run.err", "w") as run_err:
        reference = subprocess.Popen(command + ["--out", str(ref_dir)], env=env, stdout=subprocess.DEVNULL, stderr=ref_err)
        victim = subprocess.Popen(command + ["--out", str(run_dir)], env=env, stdout=subprocess.DEVNULL, stderr=run_err)
        deadline = time.monotonic() + 120
        while not list_checkpoints(str(run_dir)) and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)  # let it run on past the checkpoint, into the next stretch of steps
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=60)
        assert reference.wait(timeout=300) == 0, (tmp_path / "ref.err").read_text()[-2000:]
    assert victim.returncode == -signal.SIGKILL, f"the run ended before it could be killed:\n{(tmp_path / 'run.err').read_text()[-2000:]}"
    found = list_checkpoints(str(run_dir))
    assert found and found[-1][0] < 400  # killed after a checkpoint and before the end
    killed_at = found[-1][0]
    for step, path in found:  # whatever the kill interrupted, every listed checkpoint is complete
        assert load_checkpoint(path)["step"] == step

    resumed = subprocess.run(command + ["--out", str(run_dir)], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    step, state = final_state(run_dir)
    ref_step, ref_state = final_state(ref_dir)
    assert step == ref_step == 400
    assert_same_training_state(state, ref_state)
    # It really resumed (a restart from scratch would also match): the first log entry was written once.
    log = read_log(str(run_dir))
    assert [e["step"] for e in log].count(25) == 1 and killed_at >= 50
    # and every loss logged after the resume point equals the uninterrupted run's
    ref_loss = {e["step"]: e["loss"] for e in read_log(str(ref_dir))}
    after = {e["step"]: e["loss"] for e in log if e["step"] > killed_at}
    assert after and all(after[s] == ref_loss[s] for s in after)


# ---------------------------------------------------------------------------
# A crash while a checkpoint is being written never leaves it as the latest one.


def flaky_save(fail_on_call):
    """A torch.save that, on its n-th call, writes half the bytes and then fails like a full disk."""
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == fail_on_call:
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            raise OSError(28, "No space left on device (simulated)")
        return real_save(obj, f, *args, **kwargs)

    return save


def test_crash_during_checkpoint_write_keeps_the_previous_complete_one(tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr(torch, "save", flaky_save(fail_on_call=3))  # the checkpoint of step 30
    with pytest.raises(OSError, match="simulated"):
        train(tiny(run), progress=False)
    monkeypatch.undo()
    assert [step for step, _ in list_checkpoints(str(run))] == [10, 20]
    assert sorted(os.listdir(run / "checkpoints")) == ["checkpoint-00000010.pt", "checkpoint-00000020.pt"]  # no temp file left
    assert training.latest_checkpoint(str(run))[0] == 20
    _, _, _, _, step = load_trained(str(run))
    assert step == 20

    # Debris of an earlier hard crash (a temp file cut off mid-write) is never taken for a checkpoint.
    (run / "checkpoints" / "checkpoint-00000030.pt.tmp-99999").write_bytes(b"PK\x03\x04 half a zip")
    assert [step for step, _ in list_checkpoints(str(run))] == [10, 20]

    summary = train(tiny(run), progress=False)
    assert summary["start_step"] == 20
    train(tiny(tmp_path / "reference"), progress=False)
    assert_same_training_state(final_state(run)[1], final_state(tmp_path / "reference")[1])


def test_log_after_crash_and_resume_lists_every_step_once(tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr(torch, "save", flaky_save(fail_on_call=3))  # log entry 30 is written, checkpoint 30 is not
    with pytest.raises(OSError):
        train(tiny(run), progress=False)
    monkeypatch.undo()
    train(tiny(run), progress=False)
    assert [e["step"] for e in read_log(str(run))] == [10, 20, 30, 40]


# ---------------------------------------------------------------------------
# Divergence: stop with the step named and the last good checkpoint kept.


def poison_forward(monkeypatch, from_call, change, until_call=math.inf):
    """Apply `change` to the MLP's output on its training forwards number from_call..until_call; count the calls."""
    real_forward = MLP.forward
    calls = {"n": 0}

    def forward(self, x, c_noise, labels=None):
        out = real_forward(self, x, c_noise, labels)
        if self.training:
            calls["n"] += 1
            if from_call <= calls["n"] <= until_call:
                out = change(out)
        return out

    monkeypatch.setattr(MLP, "forward", forward)
    return calls


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_loss_stops_training_naming_the_step_and_the_last_good_checkpoint(tmp_path, monkeypatch, value):
    run = tmp_path / "run"
    calls = poison_forward(monkeypatch, 25, lambda out: out + value)  # the 25th step (0-based index 24)
    with pytest.raises(TrainingDiverged) as error:
        train(tiny(run), progress=False)
    message = str(error.value)
    assert calls["n"] == 25  # stopped at once
    assert isinstance(error.value, ConfigError) and "\n" not in message
    assert ("nan" if math.isnan(value) else "inf") in message.lower()
    assert "step 24" in message or "step 25" in message, message
    good = os.path.join(str(run), "checkpoints", "checkpoint-00000020.pt")
    assert good in message
    assert list_checkpoints(str(run)) == [(10, os.path.join(str(run), "checkpoints", "checkpoint-00000010.pt")), (20, good)]
    state = load_checkpoint(good)
    assert state["step"] == 20
    for part in ("model", "ema"):
        assert all(torch.isfinite(t).all() for t in state[part].values())
    log = read_log(str(run))
    assert [e["step"] for e in log] == [10, 20] and all(math.isfinite(e["loss"]) for e in log)


class NaNGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def test_nonfinite_gradient_never_reaches_a_checkpoint(tmp_path, monkeypatch):
    poison_forward(monkeypatch, 30, NaNGradient.apply, until_call=30)  # the 30th step, which ends with a checkpoint
    with pytest.raises(TrainingDiverged):
        train(tiny(tmp_path / "run"), progress=False)
    for _, path in list_checkpoints(str(tmp_path / "run")):
        state = load_checkpoint(path)
        for part in ("model", "ema"):
            assert all(torch.isfinite(t).all() for t in state[part].values()), f"{path} holds non-finite {part} weights"


# ---------------------------------------------------------------------------
# Loading never executes code; foreign and broken files are refused by name.


class Foreign:
    """An arbitrary class from the test module: weights_only loading must refuse it."""

    def __init__(self):
        self.payload = [1, 2, 3]


class Exploit:
    """Unpickling this without weights_only creates `marker` (the classic __reduce__ attack)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def ours(**extra):
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": 1, **extra}


def test_a_pickle_that_would_execute_code_is_refused_without_executing(tmp_path):
    # The exploit is real: loaded the unsafe way it does create its marker.
    probe_marker = tmp_path / "probe-marker"
    torch.save(ours(model=Exploit(probe_marker)), tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert probe_marker.exists()

    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint-00000001.pt"
    torch.save(ours(model=Exploit(marker)), path)
    with pytest.raises(ConfigError) as error:
        load_checkpoint(str(path))
    assert not marker.exists()
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_a_foreign_object_is_refused_by_weights_only_loading(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save(ours(model=Foreign()), path)
    assert isinstance(torch.load(path, weights_only=False)["model"], Foreign)  # loadable the unsafe way
    with pytest.raises(ConfigError) as error:
        load_checkpoint(str(path))
    assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "content, words",
    [
        (lambda p: torch.save({"weights": torch.zeros(3)}, p), ["not an edm-space checkpoint"]),  # someone else's file
        (lambda p: torch.save({**ours(), "version": 99}, p), ["version 99"]),
        (lambda p: torch.save([1, 2, 3], p), ["not an edm-space checkpoint"]),
        (lambda p: open(p, "wb").close(), ["not a readable"]),  # empty
        (lambda p: open(p, "wb").write(os.urandom(4096)), ["not a readable"]),  # garbage
    ],
)
def test_foreign_and_broken_files_are_refused_naming_the_file(tmp_path, content, words):
    path = tmp_path / "checkpoint-00000001.pt"
    content(str(path))
    with pytest.raises(ConfigError) as error:
        load_checkpoint(str(path))
    message = str(error.value)
    assert str(path) in message and "\n" not in message
    for word in words:
        assert word in message


def test_truncated_checkpoint_is_refused_naming_the_file(tmp_path):
    train(tiny(tmp_path / "run", steps=10), progress=False)
    _, path = list_checkpoints(str(tmp_path / "run"))[-1]
    with open(path, "rb") as file:
        data = file.read()
    for cut in (len(data) // 2, len(data) - 10, 100):
        with open(path, "wb") as file:
            file.write(data[:cut])
        with pytest.raises(ConfigError) as error:
            load_checkpoint(path)
        assert path in str(error.value) and "\n" not in str(error.value)


def test_a_flipped_byte_in_the_weights_is_detected(tmp_path):
    import zipfile

    train(tiny(tmp_path / "run", steps=10), progress=False)
    _, path = list_checkpoints(str(tmp_path / "run"))[-1]
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
    data = bytearray(open(path, "rb").read())
    start = data.index(b"PK\x03\x04", info.header_offset)  # the record's local header
    name_len, extra_len = int.from_bytes(data[start + 26 : start + 28], "little"), int.from_bytes(data[start + 28 : start + 30], "little")
    data[start + 30 + name_len + extra_len + 5] ^= 0xFF  # one byte of the tensor payload
    open(path, "wb").write(bytes(data))
    try:
        load_checkpoint(path)
    except ConfigError as error:
        assert path in str(error) and "\n" not in str(error)
    else:
        raise AssertionError(f"{path} has a flipped byte in its weights, yet it loaded without complaint")


# ---------------------------------------------------------------------------
# Multi-process: K = 1 and K = 2 give the same weights.


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


DDP_ARGS = [
    "train", "--preset", "edm", "--data", "8gaussians", "--data-size", "256", "--net-option", "width=32",
    "--net-option", "depth=2", "--steps", "30", "--batch", "32", "--warmup", "320", "--checkpoint-every", "30",
    "--log-every", "10",
]


def test_two_processes_under_torchrun_match_one_process(tmp_path):
    two = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
         "-m", "edm_space.cli", *DDP_ARGS, "--out", str(tmp_path / "k2")],
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:  # K = 1 in this process meanwhile, with the very settings the command line gives
        train(tiny(tmp_path / "k1", steps=30, checkpoint_every=30), progress=False)
    finally:
        out_two, err_two = two.communicate(timeout=300)
    assert two.returncode == 0, f"torchrun with 2 gloo processes failed:\n{err_two[-3000:]}"
    assert out_two.count("trained edm") == 1  # only rank 0 reports
    step1, a = final_state(tmp_path / "k1")
    step2, b = final_state(tmp_path / "k2")
    assert step1 == step2 == 30
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()  # no DDP "module." prefix
        for key in a[part]:
            torch.testing.assert_close(b[part][key], a[part][key], rtol=1e-5, atol=1e-6, msg=f"{part}.{key}")
    for index, state in a["optimizer"]["state"].items():
        other = b["optimizer"]["state"][index]
        assert float(state["step"]) == float(other["step"]) == 30
        torch.testing.assert_close(other["exp_avg"], state["exp_avg"], rtol=1e-4, atol=1e-8)
        torch.testing.assert_close(other["exp_avg_sq"], state["exp_avg_sq"], rtol=1e-4, atol=1e-12)
    log1, log2 = read_log(str(tmp_path / "k1")), read_log(str(tmp_path / "k2"))
    assert [e["step"] for e in log1] == [e["step"] for e in log2] == [10, 20, 30]
    for e1, e2 in zip(log1, log2):
        assert e2["loss"] == pytest.approx(e1["loss"], rel=1e-5)


# ---------------------------------------------------------------------------
# It learns.


def test_training_on_8gaussians_learns_the_centres(tmp_path):
    config = tiny(tmp_path / "run", data_size=2048, steps=300, batch=128, warmup_images=2000, checkpoint_every=300, log_every=25)
    train(config, progress=False)
    log = read_log(config.out)
    assert [e["step"] for e in log] == list(range(25, 301, 25))
    first, last = log[0]["loss"], sum(e["loss"] for e in log[-3:]) / 3
    assert 0.9 < first < 1.1  # F starts at 0, so the loss starts near E|target|^2 = 1
    assert last < first - 0.05, [round(e["loss"], 3) for e in log]

    denoiser, trained_config, item_shape, num_classes, step = load_trained(config.out)  # EMA weights
    assert step == 300 and item_shape == (2,) and num_classes == 0
    latents = torch.randn(512, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = samplers.sample(denoiser, latents, formulation=presets.get("edm"), solver="heun", num_steps=18)
    assert x.shape == latents.shape and torch.isfinite(x).all()
    # The 8 centres in training units: radius 1 scaled by TARGET_STD / sqrt(1/2 + 0.125^2).
    radius = 0.5 / math.sqrt(0.5 + 0.125**2)
    angle = torch.arange(8, dtype=torch.float64) * math.pi / 4
    centres = radius * torch.stack([angle.cos(), angle.sin()], dim=1)

    def distance(points):
        return float(torch.cdist(points, centres).min(dim=1).values.mean())

    # What a model that learned nothing would give: the initial latents, or a Gaussian of the data's scale
    # (which is what F = 0 samples are).
    assert distance(x) < 0.5 * distance(latents)
    assert distance(x) < 0.75 * distance(0.5 * latents), (distance(x), distance(0.5 * latents))
