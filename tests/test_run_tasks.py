"""Every task the run engine trains (diffusion, each generative family, both autoencoders) keeps the engine's
promises: a run resumed from its checkpoint ends with the same tensors, bit for bit, as one trained straight
through; a non-finite loss sets aside the checkpoint of the weights that gave it and names the last good one;
a fresh run that fails before its first checkpoint leaves no directory behind."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import pytest
import torch

from edm_space import engine
from edm_space.model_training import ModelConfig, load_model, train_model
from edm_space.rundir import TrainingDiverged, list_checkpoints, load_checkpoint
from edm_space.training import TrainConfig, load_trained, train
from edm_space import data
from edm_space.errors import ConfigError

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


def task_config(task: str, out, steps: int):
    """The options of `task` trained in `out` to `steps` (a checkpoint every 2 steps)."""
    common = dict(out=str(out), steps=steps, batch=8, checkpoint_every=2, keep_checkpoints=2, log_every=1)
    if task == "diffusion":
        return TrainConfig(preset="edm", data="moons", data_size=64, net="mlp", net_options={"width": 16, "depth": 1}, **common)
    kind, name = task.split(":")
    return ModelConfig(kind=kind, name=name, options=OPTIONS[(kind, name)], data="digits", data_size=64, **common)


def run(task: str, out, steps: int):
    """Train `task` in `out` to `steps` (a checkpoint every 2 steps); returns the summary."""
    config = task_config(task, out, steps)
    trainer = train if task == "diffusion" else train_model
    return trainer(config, progress=False, device="cpu", echo=lambda line: None)


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


# ---------------------------------------------------------------------------
# The run's options (config.json) and what it derived (record.json); runs written before record.json existed.

# The derived facts each kind of run kept in config.json before record.json existed.
OLD_FACTS = {"diffusion": ("sigma_data", "item_shape", "num_classes", "latent_space"), "model": ("held_out", "item_shape")}


def write_old_format(out, task: str) -> None:
    """Rewrite the run in `out` as runs were written before record.json: its derived facts inside config.json and
    inside each checkpoint's stored config, no record in the checkpoints, no record.json."""
    record = json.loads((out / "record.json").read_text())
    facts = {key: record[key] for key in OLD_FACTS["diffusion" if task == "diffusion" else "model"]}
    (out / "record.json").unlink()
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, **facts}, indent=2) + "\n")
    for _, path in list_checkpoints(str(out)):
        state = load_checkpoint(path)
        del state["record"]
        state["config"] = json.dumps({**json.loads(state["config"]), **facts})
        torch.save(state, path)


def loaded_weights(task: str, out):
    """(the loaded model's tensors, the item shape it was rebuilt for) of the run's newest checkpoint."""
    if task == "diffusion":
        denoiser, _, item_shape, _, _ = load_trained(str(out))
        return denoiser.network.state_dict(), item_shape
    model, loaded, _ = load_model(str(out))
    return model.state_dict(), tuple(loaded.item_shape)


@pytest.mark.parametrize("task", TASKS)
def test_config_json_holds_the_options_given_and_record_json_what_the_run_derived(tmp_path, task):
    out = tmp_path / "run"
    given = task_config(task, out, 4)
    run(task, out, 4)
    written = json.loads((out / "config.json").read_text())
    expected = given.to_json()
    if task == "family:gan":  # r1, whose default changed, is recorded with the value the run trains with
        expected["options"] = {**expected["options"], "r1": 1.0}
    assert written == expected  # the options, nothing else filled in
    assert not set(written) & {"sigma_data", "item_shape", "num_classes", "latent_space"}
    record = json.loads((out / "record.json").read_text())
    item_shape = [2] if task == "diffusion" else [1, 8, 8]  # moons points; 8x8 grey digits
    assert record["item_shape"] == item_shape and record["step"] == 4
    assert (out / record["checkpoint"]).samefile(list_checkpoints(str(out))[-1][1])
    if task == "diffusion":
        points = torch.as_tensor(data.load("moons", n=64, seed=0), dtype=torch.float64).reshape(-1)
        assert record["sigma_data"] == round(math.sqrt(float(((points - points.mean()) ** 2).mean())), 6)
        assert record["num_classes"] == 0 and record["latent_space"] is None
    else:
        assert record["held_out"] == len(data.load("digits")) // 10  # the default: a tenth of the data set
    # The parameter count is that of the rebuilt model's trainable tensors (a module's buffers are in its state_dict too).
    model = load_trained(str(out))[0].network if task == "diffusion" else load_model(str(out))[0]
    assert record["parameters"] == sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("task", TASKS)
def test_a_run_written_before_records_loads_and_resumes_bit_exactly(tmp_path, task):
    straight, old = tmp_path / "straight", tmp_path / "old"
    run(task, straight, 4)
    run(task, old, 2)
    before, shape = loaded_weights(task, old)
    write_old_format(old, task)
    assert not (old / "record.json").exists() and "item_shape" in json.loads((old / "config.json").read_text())
    after, old_shape = loaded_weights(task, old)  # loads as before, the facts read from config.json
    assert old_shape == shape and before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert run(task, old, 4)["start_step"] == 2
    pairs_a = tensors(load_checkpoint(list_checkpoints(str(straight))[-1][1]))
    pairs_b = tensors(load_checkpoint(list_checkpoints(str(old))[-1][1]))
    assert [path for path, _ in pairs_a] == [path for path, _ in pairs_b] and pairs_a
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(pairs_a, pairs_b))
    # Resumed, the run is written the new way: the options in config.json, the facts in record.json.
    assert json.loads((old / "config.json").read_text()).keys() == task_config(task, old, 4).to_json().keys()
    record, straight_record = (json.loads((folder / "record.json").read_text()) for folder in (old, straight))
    assert record == straight_record


def test_a_resumed_diffusion_run_keeps_its_recorded_sigma_data_in_either_format(tmp_path):
    # As before records: a resumed run trains with the sigma_data it recorded, not one measured again.
    for layout in ("record", "old"):
        out = tmp_path / layout
        run("diffusion", out, 2)
        if layout == "old":
            write_old_format(out, "diffusion")
            path, key = out / "config.json", "sigma_data"
        else:
            path, key = out / "record.json", "sigma_data"
        payload = json.loads(path.read_text())
        payload[key] = 0.75
        path.write_text(json.dumps(payload))
        assert run("diffusion", out, 4)["sigma_data"] == 0.75
        assert json.loads((out / "record.json").read_text())["sigma_data"] == 0.75
        assert load_trained(str(out))[0].formulation.preconditioning.sigma_data == 0.75


@pytest.mark.parametrize("layout", ["record", "old"])
def test_a_model_run_resumed_with_another_held_out_count_is_refused_and_with_its_own_accepted(tmp_path, layout):
    out = tmp_path / "run"
    run("autoencoder:kl", out, 2)
    if layout == "old":
        write_old_format(out, "autoencoder:kl")
    count = len(data.load("digits")) // 10
    with pytest.raises(ConfigError, match=r"other settings \(held_out\)"):
        train_model(dataclasses.replace(task_config("autoencoder:kl", out, 4), held_out=count + 1), progress=False, echo=lambda line: None)
    summary = train_model(dataclasses.replace(task_config("autoencoder:kl", out, 4), held_out=count), progress=False, echo=lambda line: None)
    assert (summary["start_step"], summary["held_out"]) == (2, count)


def test_a_record_json_with_a_foreign_field_is_refused_in_one_line(tmp_path):
    out = tmp_path / "run"
    run("diffusion", out, 2)
    payload = json.loads((out / "record.json").read_text())
    (out / "record.json").write_text(json.dumps({**payload, "colour": "blue"}))
    with pytest.raises(ConfigError) as caught:
        load_trained(str(out))
    assert "record.json" in str(caught.value) and "'colour'" in str(caught.value) and "\n" not in str(caught.value)
