"""Training, resuming, evaluating and sampling the families and autoencoders (edm_space.model_training, cli_models)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from edm_space.cli_models import autoencoder_group, train_family
from edm_space.data import load
from edm_space.errors import ConfigError
from edm_space.families.nice import NICE
from edm_space.model_training import HOLDOUT_SEED, autoencoder_checksum, evaluate_autoencoder, ModelConfig, load_model, sample_model, split_indices, train_model
from edm_space.rundir import list_checkpoints, load_checkpoint
from edm_space.training import TrainingDiverged, read_log

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = 1797  # items of scikit-learn's 8x8 digits
# Tiny models of 8x8 digits, each a few thousand weights.
TINY = {
    ("family", "nice"): {"couplings": 2, "width": 16, "depth": 1},
    ("family", "gan"): {"latent_dim": 4, "channels": 4},
    ("autoencoder", "vq"): {"channels": 8, "latent_channels": 2, "num_codes": 8, "ema": True, "restart_after": 1},
    ("autoencoder", "kl"): {"channels": 8, "latent_channels": 2},
}
AE_TRAIN = ["--data", "digits", "--data-size", "64", "--option", "channels=8", "--option", "latent_channels=2",
            "--steps", "4", "--batch", "8", "--checkpoint-every", "2"]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(out, kind: str, name: str, steps: int, **changes) -> ModelConfig:
    settings = dict(kind=kind, name=name, options=TINY[(kind, name)], data="digits", data_size=64, steps=steps, batch=8,
                    checkpoint_every=2, keep_checkpoints=2, log_every=1, out=str(out))
    settings.update(changes)
    return ModelConfig(**settings)


def held_out_digits(count: int) -> torch.Tensor:
    """The held-out digits by the documented rule, recomputed here: the first `count` of a fixed-seed permutation."""
    x = load("digits")
    index = np.sort(np.random.default_rng(HOLDOUT_SEED).permutation(DIGITS)[:count])
    return x[torch.from_numpy(index)]


def test_autoencoder_train_then_eval_reports_held_out_mse_and_psnr(tmp_path):
    run = str(tmp_path / "ae")
    runner = CliRunner()
    trained = runner.invoke(autoencoder_group, ["train", "--kind", "kl", *AE_TRAIN, "--out", run])
    assert trained.exit_code == 0, trained.output
    picture = str(tmp_path / "recon.png")
    result = runner.invoke(autoencoder_group, ["eval", "--ckpt", run, "--n", "12", "--iwae-samples", "2", "--out", picture])
    assert result.exit_code == 0, result.output
    mse = float(re.search(r"MSE ([0-9.eE+-]+),", result.output).group(1))
    psnr = float(re.search(r"PSNR ([0-9.eE+-]+) dB", result.output).group(1))
    assert psnr == pytest.approx(10 * math.log10(4 / mse), abs=1e-3)  # peak-to-peak 2 of data in [-1, 1]
    assert re.search(r"ELBO [0-9.]+ bits/dim, IWAE \(k=2\) [0-9.]+ bits/dim", result.output)

    # The same MSE from the 12 held-out items the documented rule draws (the held-out tenth recomputed, then the
    # first 12 of torch.randperm under seed 0), reconstructed through the posterior mean, as a plain mean of squared differences.
    model, config, step = load_model(run)
    assert config.held_out == DIGITS // 10
    # Latent diffusion's change detection: the SHA-256 of the very checkpoint file read.
    checkpoints = dict(list_checkpoints(run))
    for at in (2, 4):
        with open(checkpoints[at], "rb") as file:
            assert autoencoder_checksum(run, at) == hashlib.sha256(file.read()).hexdigest()
    assert step == 4 and autoencoder_checksum(run) == autoencoder_checksum(run, 4) != autoencoder_checksum(run, 2)
    x = held_out_digits(DIGITS // 10)[torch.randperm(DIGITS // 10, generator=torch.Generator().manual_seed(0))[:12]]
    with torch.no_grad():
        expected = float(((model.decode(model.encode(x)[0]) - x) ** 2).mean())
    assert mse == pytest.approx(expected, rel=1e-5)

    # Originals above reconstructions: two rows of 8 tiles, each an 8x8 digit upsampled 8 times to 64 px,
    # 2 px apart, under a caption band. Read each tile's pixel centres back and compare with 8-bit levels.
    image = np.asarray(Image.open(picture).convert("L")).astype(int)
    assert image.shape[1] == 2 + 8 * (64 + 2)
    with torch.no_grad():
        reconstructions = model.decode(model.encode(x[:8])[0]).clamp(-1, 1)
    for row, images in ((0, x[:8]), (1, reconstructions)):
        top = image.shape[0] - 2 - (2 - row) * 64 - (1 - row) * 2
        for column in range(8):
            left = 2 + column * 66
            tile = image[top + 4:top + 64:8, left + 4:left + 64:8]
            levels = np.rint((images[column, 0].numpy().astype(np.float64) + 1) * 127.5)
            assert np.abs(tile - levels).max() <= 1


def test_autoencoder_eval_scores_a_seeded_random_subset_of_class_sorted_data(tmp_path):
    # Data sorted by class, as MNIST's held-out order is: the first items held out are all of one class.
    x, labels = load("digits", with_labels=True)
    order = torch.argsort(labels, stable=True)
    path = str(tmp_path / "sorted.npz")
    np.savez(path, x=x[order].numpy(), labels=labels[order].numpy())
    run = str(tmp_path / "ae")
    train_model(tiny_config(run, "autoencoder", "kl", steps=1, data=path, data_size=None), progress=False, device="cpu")
    held = x[order][torch.from_numpy(np.sort(np.random.default_rng(HOLDOUT_SEED).permutation(DIGITS)[:DIGITS // 10]))]
    classes = lambda items: {int(labels[order][int(torch.where((x[order] == item).flatten(1).all(1))[0][0])]) for item in items}  # noqa: E731
    assert classes(held[:20]) == {0, 1}  # what scoring the first 20 would see
    first = evaluate_autoencoder(run, n=20, iwae_samples=1)
    assert len(classes(first["originals"])) >= 6 and first["n"] == 20
    assert torch.equal(evaluate_autoencoder(run, n=20, iwae_samples=1)["originals"], first["originals"])  # seeded
    assert not torch.equal(evaluate_autoencoder(run, n=20, iwae_samples=1, seed=1)["originals"], first["originals"])
    assert torch.equal(evaluate_autoencoder(run, n=10**6, iwae_samples=1)["originals"], held)  # all of them, in order


def test_autoencoder_eval_device_defaults_to_auto():
    option = next(p for p in autoencoder_group.commands["eval"].params if p.name == "device")
    assert option.default == "auto"


def test_split_refusal_is_none_exactly_when_the_minibatch_std_groups_stay_within_each_process():
    from edm_space import autoencoders, families
    from edm_space.families.gan import minibatch_std

    h = torch.randn(24, 3, generator=torch.Generator().manual_seed(0))
    for group, batch, parts in ((2, 8, 2), (4, 8, 2), (4, 12, 2), (3, 12, 2), (8, 24, 4), (16, 24, 2), (0, 6, 3)):
        gan = families.build("gan", (2,), latent_dim=4, width=8, depth=1, minibatch_std=group)
        x = h[:batch]
        # A second method: the feature of the whole batch against that of each process's part, computed alone.
        split = torch.cat([minibatch_std(part, group) if group else part for part in x.chunk(parts)])
        whole = minibatch_std(x, group) if group else x
        assert (gan.split_refusal(batch, parts) is None) == torch.equal(split, whole), (group, batch, parts)
    assert "batch norm" in families.build("gan", (1, 8, 8), latent_dim=4, channels=4).split_refusal(8, 2)
    assert "codebook" in autoencoders.build("vq", (1, 8, 8), **TINY[("autoencoder", "vq")]).split_refusal(8, 2)
    for name, options in (("nice", TINY[("family", "nice")]), ("pixelcnn", {"channels": 4, "blocks": 1, "head": 4}),
                          ("vae", TINY[("autoencoder", "kl")])):
        assert families.build(name, (1, 8, 8), **options).split_refusal(8, 2) is None
    assert autoencoders.build("kl", (1, 8, 8), **TINY[("autoencoder", "kl")]).split_refusal(8, 2) is None


def test_model_training_leaves_the_callers_config_and_global_rng_alone(tmp_path):
    import copy

    config = tiny_config(tmp_path / "gan", "family", "gan", steps=2)
    given = copy.deepcopy(config)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    train_model(config, progress=False, device="cpu")
    assert config == given and torch.equal(torch.get_rng_state(), before)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(cwd, *args, **options) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("EDM_SPACE_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", *args],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options)


def test_torchrun_on_a_vq_autoencoder_is_refused_in_one_line_and_leaves_no_run(tmp_path):
    done = torchrun(tmp_path, "-m", "edm_space.cli", "autoencoder", "train", "--kind", "vq", *AE_TRAIN, "--out", "run")
    out, err = done.communicate(timeout=300)
    assert done.returncode != 0
    refusal = ("error: autoencoder 'vq' cannot train in 2 processes: its codebook bookkeeping (code usage, dead-code restarts, "
               "EMA averages) reads the whole batch; run it without torchrun")
    assert 1 <= err.count(refusal) <= 2  # each rank that got to say it before torchrun stopped the other, one line
    assert "in use by process" not in err  # no rank refused the other's lock
    assert os.listdir(tmp_path) == []  # no run directory, no lock


# Two optimizers and the minibatch standard deviation (gan), dequantization noise (nice), posterior draws (kl).
SPLIT = (("family", "gan", {"latent_dim": 4, "width": 16, "depth": 1, "minibatch_std": 2, "r1": 1.0}, "moons"),
         ("family", "nice", TINY[("family", "nice")], "digits"), ("autoencoder", "kl", TINY[("autoencoder", "kl")], "digits"))
SPLIT_SCRIPT = """import json, sys
from edm_space.distributed import finish_distributed
from edm_space.model_training import ModelConfig, train_model
for settings in json.loads(sys.argv[1]):
    train_model(ModelConfig(**settings), progress=False, device="cpu", echo=print)
finish_distributed()
"""


def test_two_processes_under_torchrun_match_one_process(tmp_path):
    configs = lambda folder: [tiny_config(tmp_path / folder / name, kind, name, steps=4, options=options, data=data, log_every=2)  # noqa: E731
                              for kind, name, options, data in SPLIT]
    (tmp_path / "split.py").write_text(SPLIT_SCRIPT)
    two = torchrun(tmp_path, "split.py", json.dumps([config.to_json() for config in configs("k2")]))
    try:  # one process here meanwhile
        for config in configs("k1"):
            train_model(config, progress=False, device="cpu", echo=lambda line: None)
    finally:
        out, err = two.communicate(timeout=300)
    assert two.returncode == 0, f"torchrun with 2 gloo processes failed:\n{err[-3000:]}"
    assert out.count("parameters on cpu") == len(SPLIT)  # only rank 0 reports
    for kind, name, _, _ in SPLIT:
        one, split = str(tmp_path / "k1" / name), str(tmp_path / "k2" / name)
        assert sorted(os.listdir(split)) == sorted(os.listdir(one)) and [s for s, _ in list_checkpoints(split)] == [2, 4]
        a, b = load_checkpoint(list_checkpoints(one)[-1][1]), load_checkpoint(list_checkpoints(split)[-1][1])
        noise = set()
        for group, names in _optimized_names(one, kind).items():
            for index, state in a["optimizers"][group]["state"].items():
                other = b["optimizers"][group]["state"][index]
                assert float(state["step"]) == float(other["step"]) == 4
                if float(state["exp_avg_sq"].max()) < 1e-14:  # see below
                    noise.add(names[index])
                    continue
                torch.testing.assert_close(other["exp_avg"], state["exp_avg"], rtol=1e-4, atol=1e-8, msg=f"{name} {names[index]}")
                torch.testing.assert_close(other["exp_avg_sq"], state["exp_avg_sq"], rtol=1e-4, atol=1e-12, msg=f"{name} {names[index]}")
        # Weights agree to float32 rounding (the processes sum the gradients in another order), except where rounding
        # is all there is: a bias followed by a normalization has an exact gradient of 0, its computed one is rounding
        # noise (Adam's second moment below 1e-14 here, above 1e-8 for every other weight) and Adam turns noise
        # into steps of up to lr each (Kingma & Ba 2015, Sec. 2.1), so those weights may differ by 2 lr per step.
        lr = load_model(one)[1].lr
        for key, value in a["model"].items():
            tolerance = dict(rtol=0.0, atol=2 * lr * 4) if key in noise else dict(rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(b["model"][key], value, **tolerance, msg=f"{name} {key}")
        assert len(noise) < len(a["model"]) / 4  # the exception stays an exception
        for e1, e2 in zip(read_log(one), read_log(split), strict=True):
            assert e1["step"] == e2["step"] and e2["losses"] == pytest.approx(e1["losses"], rel=1e-5)


def _optimized_names(run: str, kind: str) -> dict:
    """{optimizer: [the name of its parameter i]} of a run's model (the order in which its optimizers hold them)."""
    model = load_model(run)[0]
    names = {id(parameter): key for key, parameter in model.named_parameters()}
    groups = model.optimizer_groups() if kind == "family" else {"model": list(model.parameters())}
    return {group: [names[id(parameter)] for parameter in parameters] for group, parameters in groups.items()}


def test_a_diffusion_command_on_a_family_or_autoencoder_run_names_its_kind(tmp_path):
    from edm_space.training import read_run_config

    for kind, name, command in (("family", "nice", "train --family nice"), ("autoencoder", "kl", "autoencoder train --kind kl")):
        run = tmp_path / name
        train_model(tiny_config(run, kind, name, steps=1), progress=False, device="cpu")
        with pytest.raises(ConfigError) as refused:
            read_run_config(str(run))
        message = str(refused.value)
        assert f"a {name} {kind} run" in message and f"edm-space {command} --out {run}" in message and "unknown fields" not in message


def test_training_items_are_disjoint_from_held_out_items(tmp_path):
    train, held = split_indices(DIGITS, 179, 64, seed=3)
    assert len(train) == 64 and len(held) == 179
    assert not set(train.tolist()) & set(held.tolist())
    assert held.tolist() == sorted(np.random.default_rng(HOLDOUT_SEED).permutation(DIGITS)[:179].tolist())
    # The held-out items do not depend on the run's seed or subset size.
    assert split_indices(DIGITS, 179, None, seed=7)[1].tolist() == held.tolist()


def states_equal(a, b) -> bool:
    """Recursive exact equality of (nested) state dicts."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(states_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(states_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("kind, name", [("family", "nice"), ("family", "gan"), ("autoencoder", "vq")])
def test_resume_is_bit_exact(tmp_path, kind, name):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_model(tiny_config(straight, kind, name, steps=4), progress=False, device="cpu", echo=lambda line: None)
    train_model(tiny_config(resumed, kind, name, steps=2), progress=False, device="cpu", echo=lambda line: None)
    summary = train_model(tiny_config(resumed, kind, name, steps=4), progress=False, device="cpu", echo=lambda line: None)
    assert summary["start_step"] == 2
    a = load_checkpoint(list_checkpoints(str(straight))[-1][1])
    b = load_checkpoint(list_checkpoints(str(resumed))[-1][1])
    assert a["step"] == b["step"] == 4
    assert states_equal(a["model"], b["model"])
    assert states_equal(a["optimizers"], b["optimizers"])
    # Training moved the weights between the checkpoints, so the comparison is not of untouched tensors.
    middle = load_checkpoint(list_checkpoints(str(straight))[0][1])
    assert middle["step"] == 2 and not states_equal(middle["model"], a["model"])
    # log.jsonl: one entry per step (log_every = 1), the same losses either way, and a throughput.
    logs = [read_log(str(run)) for run in (straight, resumed)]
    assert [entry["step"] for entry in logs[1]] == [1, 2, 3, 4]
    assert [entry["losses"] for entry in logs[0]] == [entry["losses"] for entry in logs[1]]
    assert all(entry["images_per_s"] > 0 for entry in logs[1])


def test_run_directory_in_use_is_refused(tmp_path):
    run = tmp_path / "busy"
    train_model(tiny_config(run, "family", "nice", steps=2), progress=False, device="cpu", echo=lambda line: None)
    before = sorted(os.listdir(run / "checkpoints"))
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        lock = f"{sleeper.pid} {socket.gethostname()}\n"
        (run / "lock").write_text(lock)
        with pytest.raises(ConfigError, match=f"in use by process {sleeper.pid}"):
            train_model(tiny_config(run, "family", "nice", steps=4), progress=False, device="cpu", echo=lambda line: None)
        assert (run / "lock").read_text() == lock  # the other process's lock stays
        assert sorted(os.listdir(run / "checkpoints")) == before
    finally:
        sleeper.kill()
        sleeper.wait()


def test_non_finite_loss_names_the_last_good_checkpoint(tmp_path, monkeypatch):
    original = NICE.train_step
    calls = []

    def fails_at_step_four(self, x, optimizers, generator):
        calls.append(1)
        losses = original(self, x, optimizers, generator)
        return {**losses, "nll": math.nan} if len(calls) == 5 else losses

    monkeypatch.setattr(NICE, "train_step", fails_at_step_four)
    run = tmp_path / "nan"
    with pytest.raises(TrainingDiverged) as caught:
        train_model(tiny_config(run, "family", "nice", steps=6), progress=False, device="cpu", echo=lambda line: None)
    message = str(caught.value)
    assert "\n" not in message
    assert "'nll' became nan at step 4" in message
    # Checkpoint 4 holds the weights whose loss was NaN: it is set aside, and checkpoint 2 is named.
    assert message.endswith(os.path.join(str(run), "checkpoints", "checkpoint-00000002.pt"))
    assert [step for step, _ in list_checkpoints(str(run))] == [2]
    assert (run / "checkpoints" / "diverged-checkpoint-00000004.pt").exists()
    monkeypatch.setattr(NICE, "train_step", original)
    assert train_model(tiny_config(run, "family", "nice", steps=6), progress=False, device="cpu", echo=lambda line: None)["start_step"] == 2


def test_fresh_run_failing_before_its_first_checkpoint_leaves_no_directory(tmp_path):
    run = tmp_path / "parent" / "fresh"
    with pytest.raises(ConfigError, match="couplings"):
        train_model(tiny_config(run, "family", "nice", steps=2, options={"couplings": -1}), progress=False, device="cpu")
    assert not (tmp_path / "parent").exists()


def test_vae_family_trains_and_samples_from_its_prior(tmp_path):
    run = str(tmp_path / "vae")
    train_family("vae", "digits", {"channels": 8, "latent_channels": 2, "iwae_samples": 2}, run, data_size=64, steps=3, batch=8,
                 checkpoint_every=1, keep_checkpoints=2, device="cpu", echo=lambda line: None)
    assert [step for step, _ in list_checkpoints(run)] == [2, 3]
    out = str(tmp_path / "samples.npz")
    summary = sample_model(run, seeds=[5, 6], out=out)
    assert summary["written"] == [out, str(tmp_path / "samples.png")] and os.path.exists(tmp_path / "samples.png")
    with np.load(out) as arrays:
        samples, seeds = arrays["samples"], arrays["seeds"]
    assert samples.shape == (2, 1, 8, 8) and seeds.tolist() == [5, 6]
    # Sample i is decode(z) for z ~ N(0, I) drawn by a generator seeded with seed i, clamped to [-1, 1].
    family, _, _ = load_model(run)
    ae = family.autoencoder
    with torch.no_grad():
        z = torch.randn((1, *ae.latent_shape), generator=torch.Generator().manual_seed(6))
        expected = ae.decode(z).clamp(-1, 1)
    np.testing.assert_array_equal(samples[1:], expected.numpy())
    alone = str(tmp_path / "alone.npz")
    sample_model(run, seeds=[6], out=alone)
    with np.load(alone) as arrays:
        np.testing.assert_array_equal(arrays["samples"], samples[1:])


def test_eval_refuses_a_checkpoint_of_another_kind(tmp_path):
    run = tmp_path / "ae"
    runner = CliRunner()
    assert runner.invoke(autoencoder_group, ["train", "--kind", "kl", *AE_TRAIN, "--steps", "2", "--out", str(run)]).exit_code == 0
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "kind": "family", "name": "nice"}))
    result = runner.invoke(autoencoder_group, ["eval", "--ckpt", str(run), "--out", str(tmp_path / "r.png")])
    assert isinstance(result.exception, ConfigError)
    assert "trained as autoencoder 'kl', but config.json says family 'nice'" in str(result.exception)
    assert not (tmp_path / "r.png").exists()

    family_run = tmp_path / "nice"
    train_model(tiny_config(family_run, "family", "nice", steps=2), progress=False, device="cpu", echo=lambda line: None)
    result = runner.invoke(autoencoder_group, ["eval", "--ckpt", str(family_run), "--out", str(tmp_path / "r.png")])
    assert isinstance(result.exception, ConfigError) and "not an autoencoder" in str(result.exception)
