"""Every task the run engine trains (diffusion, each generative family, both autoencoders) keeps the engine's
promises: a run resumed from its checkpoint ends with the same tensors, bit for bit, as one trained straight
through; a non-finite loss sets aside the checkpoint of the weights that gave it and names the last good one;
a fresh run that fails before its first checkpoint leaves no directory behind."""

from __future__ import annotations

import math
import os

import pytest
import torch

from edm_space import engine
from edm_space.model_training import ModelConfig, train_model
from edm_space.rundir import TrainingDiverged, list_checkpoints, load_checkpoint
from edm_space.training import TrainConfig, train

# Tiny models of 8x8 digits (the toy moons for diffusion), each a few thousand weights.
OPTIONS = {
    ("family", "nice"): {"couplings": 2, "width": 16, "depth": 1},
    ("family", "gan"): {"latent_dim": 4, "channels": 4},
    ("family", "pixelcnn"): {"channels": 8, "blocks": 1, "head": 8},
    ("family", "vae"): {"channels": 8, "latent_channels": 2, "iwae_samples": 2},
    ("autoencoder", "kl"): {"channels": 8, "latent_channels": 2},
    ("autoencoder", "vq"): {"channels": 8, "latent_channels": 2, "num_codes": 8, "ema": True, "restart_after": 1},
}
TASKS = ["diffusion", *(f"{kind}:{name}" for kind, name in OPTIONS)]


pytestmark = pytest.mark.usefixtures("one_thread")


def run(task: str, out, steps: int):
    """Train `task` in `out` to `steps` (a checkpoint every 2 steps); returns the summary."""
    common = dict(out=str(out), steps=steps, batch=8, checkpoint_every=2, keep_checkpoints=2, log_every=1)
    if task == "diffusion":
        config = TrainConfig(preset="edm", data="moons", data_size=64, net="mlp", net_options={"width": 16, "depth": 1}, **common)
        return train(config, progress=False, device="cpu", echo=lambda line: None)
    kind, name = task.split(":")
    config = ModelConfig(kind=kind, name=name, options=OPTIONS[(kind, name)], data="digits", data_size=64, **common)
    return train_model(config, progress=False, device="cpu", echo=lambda line: None)


def tensors(state):
    """The tensors of a checkpoint's states, flattened to (path, tensor) pairs (the config text left out)."""
    found = []

    def walk(value, path):
        if isinstance(value, torch.Tensor):
            found.append((path, value))
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                walk(value[key], f"{path}/{key}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{path}/{i}")

    walk({key: value for key, value in state.items() if key != "config"}, "")
    return found


def inject_nan(monkeypatch, at_step: int):
    """Make the engine's step `at_step` report a NaN loss, whatever the task."""
    original = engine.run_steps

    def run_steps(run_dir, task, *args, **kwargs):
        inner = task.train_step

        def train_step(step, check):
            if step == at_step:
                check("injected loss", math.nan)
            return inner(step, check)

        task.train_step = train_step
        return original(run_dir, task, *args, **kwargs)

    monkeypatch.setattr(engine, "run_steps", run_steps)


@pytest.mark.parametrize("task", TASKS)
def test_resume_is_bit_exact(tmp_path, task):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(task, straight, 4)
    run(task, resumed, 2)
    assert run(task, resumed, 4)["start_step"] == 2
    a = load_checkpoint(list_checkpoints(str(straight))[-1][1])
    b = load_checkpoint(list_checkpoints(str(resumed))[-1][1])
    assert a["step"] == b["step"] == 4
    pairs_a, pairs_b = tensors(a), tensors(b)
    assert [path for path, _ in pairs_a] == [path for path, _ in pairs_b] and pairs_a
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(pairs_a, pairs_b))
    # Training moved the weights between the checkpoints, so the comparison is not of untouched tensors.
    middle = load_checkpoint(list_checkpoints(str(straight))[0][1])
    weights_middle, weights_end = tensors({"model": middle["model"]}), tensors({"model": a["model"]})
    assert not all(torch.equal(x, y) for (_, x), (_, y) in zip(weights_middle, weights_end))


@pytest.mark.parametrize("task", TASKS)
def test_divergence_names_the_last_good_checkpoint(tmp_path, monkeypatch, task):
    out = tmp_path / "run"
    inject_nan(monkeypatch, at_step=4)
    with pytest.raises(TrainingDiverged) as caught:
        run(task, out, 6)
    message = str(caught.value)
    assert "injected loss became nan at step 4" in message and "\n" not in message
    assert message.endswith(os.path.join(str(out), "checkpoints", "checkpoint-00000002.pt"))
    assert [step for step, _ in list_checkpoints(str(out))] == [2]
    assert (out / "checkpoints" / "diverged-checkpoint-00000004.pt").is_file()


@pytest.mark.parametrize("task", TASKS)
def test_a_fresh_run_failing_before_its_first_checkpoint_leaves_no_directory(tmp_path, monkeypatch, task):
    out = tmp_path / "parent" / "fresh"
    inject_nan(monkeypatch, at_step=1)
    with pytest.raises(TrainingDiverged, match="injected loss became nan at step 1; no checkpoint was written yet"):
        run(task, out, 4)
    assert not (tmp_path / "parent").exists()
