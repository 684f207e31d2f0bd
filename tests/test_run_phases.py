"""Resuming with other settings (phases), and starting a new run from another run's weights (--init-from)."""

import json
import math

import pytest
import torch

from edm_space.errors import ConfigError
from edm_space.init_from import parse_source
from edm_space.training import TrainConfig, list_checkpoints, load_checkpoint, read_log, train
from helpers_cli import TINY_TRAIN, cli_error, cli_ok

BASE = ["--data", "branches", "--data-size", "256", "--net-option", "width=16", "--net-option", "depth=1",
        "--batch", "16", "--warmup", "16", "--log-every", "5", "--checkpoint-every", "10", "--ema-stds", "none"]


pytestmark = pytest.mark.usefixtures("one_thread")


def config_json(run):
    return json.loads((run / "config.json").read_text())


def test_resuming_with_another_lr_and_batch_records_a_phase_and_counts_images(tmp_path, capsys):
    run = tmp_path / "run"
    cli_ok(["train", *BASE, "--steps", "20", "--lr", "0.002", "--out", str(run)], capsys)
    assert config_json(run)["phases"] == []
    cli_ok(["train", "--steps", "30", "--lr", "0.0005", "--batch", "32", "--out", str(run)], capsys)
    stored = config_json(run)
    assert stored["lr"] == 0.0005 and stored["batch"] == 32 and stored["net_options"] == {"width": 16, "depth": 1}
    assert stored["phases"] == [{"step": 20, "images": 320, "changes": {"steps": [20, 30], "batch": [16, 32], "lr": [0.002, 0.0005]}}]
    log = {e["step"]: e for e in read_log(str(run))}
    assert [log[s]["lr"] for s in (5, 20)] == [0.002, 0.002]
    assert [log[s]["lr"] for s in (25, 30)] == [0.0005, 0.0005]
    assert log[20]["images"] == 320 and log[25]["images"] == 320 + 5 * 32 and log[30]["images"] == 640
    # A second change is a second phase; an unchanged resume adds none.
    cli_ok(["train", "--steps", "40", "--checkpoint-every", "5", "--out", str(run)], capsys)
    cli_ok(["train", "--steps", "40", "--out", str(run)], capsys)
    phases = config_json(run)["phases"]
    assert [p["step"] for p in phases] == [20, 30]
    assert phases[1] == {"step": 30, "images": 640, "changes": {"steps": [30, 40], "checkpoint_every": [10, 5]}}


def test_a_changed_run_resumes_bit_exactly_after_a_crash(tmp_path):
    settings = dict(data="8gaussians", data_size=256, net_options={"width": 16, "depth": 1}, warmup_images=64, log_every=10, checkpoint_every=10)
    train(TrainConfig(out=str(tmp_path / "a"), steps=20, batch=16, **settings), progress=False)
    train(TrainConfig(out=str(tmp_path / "a"), steps=40, batch=32, lr=5e-4, **settings), progress=False)
    train(TrainConfig(out=str(tmp_path / "b"), steps=20, batch=16, **settings), progress=False)
    train(TrainConfig(out=str(tmp_path / "b"), steps=30, batch=32, lr=5e-4, **settings), progress=False)  # stops at 30 ...
    train(TrainConfig(out=str(tmp_path / "b"), steps=40, batch=32, lr=5e-4, **settings), progress=False)  # ... goes on
    a, b = (load_checkpoint(list_checkpoints(str(tmp_path / n))[-1][1]) for n in "ab")
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    for key in ("profiles",):
        assert all(torch.equal(x, y) for pa, pb in zip(a["posthoc_ema"][key], b["posthoc_ema"][key]) for x, y in zip(pa, pb))


@pytest.mark.parametrize("change, name", [
    (["--net-option", "width=32"], "net_options"),
    (["--data", "moons"], "data"),
    (["--seed", "3"], "seed"),
    (["--ema-stds", "0.05"], "ema_stds"),
])
def test_resuming_with_another_model_is_refused_in_one_line(tmp_path, capsys, change, name):
    run = tmp_path / "run"
    cli_ok(["train", *BASE, "--steps", "10", "--out", str(run)], capsys)
    cli_error(["train", "--steps", "20", *change, "--out", str(run)], capsys, [name, "--init-from"], roots=[tmp_path])


def test_init_from_loads_the_weights_and_finetunes_into_a_conditional_model(tmp_path, capsys):
    source = tmp_path / "source"
    cli_ok(["train", *BASE, "--steps", "10", "--out", str(source)], capsys)
    out = cli_ok(["train", *BASE, "--steps", "1", "--lr", "1e-30", "--warmup", "0", "--conditional", "--init-from", f"{source}:10",
                  "--out", str(tmp_path / "tuned")], capsys)
    assert "start fresh (label." in out
    before = load_checkpoint(list_checkpoints(str(source))[-1][1])["ema"]
    after = load_checkpoint(list_checkpoints(str(tmp_path / "tuned"))[-1][1])["model"]
    assert any(name.startswith("label.") for name in after)
    for name, tensor in before.items():  # one step at lr 1e-30 leaves the loaded weights as they were
        assert torch.allclose(after[name], tensor, rtol=0, atol=1e-20), name
    assert config_json(tmp_path / "tuned")["init_from"] == f"{source}:10"
    raw = load_checkpoint(list_checkpoints(str(source))[-1][1])["model"]
    assert not torch.equal(raw["inp.weight"], before["inp.weight"])


def test_init_from_a_mismatched_network_names_the_tensor(tmp_path, capsys):
    source = tmp_path / "source"
    cli_ok(["train", *BASE, "--steps", "10", "--out", str(source)], capsys)
    line = cli_error(["train", *TINY_TRAIN, "--net-option", "width=32", "--init-from", str(source), "--out", str(tmp_path / "new")],
                     capsys, ["--init-from", "shape [16"], roots=[tmp_path])
    assert "'inp.weight'" in line or "tensor '" in line
    cli_error(["train", *TINY_TRAIN, "--init-from", f"{source}:7", "--out", str(tmp_path / "new")], capsys, ["step 7"], roots=[tmp_path])


def test_parse_source():
    assert parse_source("runs/a:30") == ("runs/a", 30)
    assert parse_source("runs/a") == ("runs/a", None)
    assert parse_source("C:/runs/a") == ("C:/runs/a", None)


def test_init_from_a_missing_run_is_named(tmp_path, capsys):
    line = cli_error(["train", *TINY_TRAIN, "--init-from", str(tmp_path / "nope"), "--out", str(tmp_path / "new")], capsys,
                     ["--init-from", "nope", "does not exist"], roots=[tmp_path])
    assert "--ckpt" not in line
