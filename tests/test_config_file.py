"""`edm-space train --config run.toml`: options from TOML, the command line overriding them."""

import json

import pytest

from helpers_cli import cli_error, cli_ok

TOML = """
data = "moons"
data-size = 256
steps = 3
batch = 16
warmup = 16
lr = 0.001
net_option = {width = 16, depth = 1}
lr-schedule = "cosine"
ema-stds = [0.07]
"""


pytestmark = pytest.mark.usefixtures("one_thread")


def stored(run):
    payload = json.loads((run / "config.json").read_text())
    payload.pop("out")
    return payload


def test_a_toml_run_equals_the_same_options_typed_and_the_command_line_wins(tmp_path, capsys):
    (tmp_path / "run.toml").write_text(TOML)
    cli_ok(["train", "--config", str(tmp_path / "run.toml"), "--lr", "0.003", "--out", str(tmp_path / "a")], capsys)
    cli_ok(["train", "--data", "moons", "--data-size", "256", "--steps", "3", "--batch", "16", "--warmup", "16", "--lr", "0.003",
            "--net-option", "width=16", "--net-option", "depth=1", "--lr-schedule", "cosine", "--ema-stds", "0.07",
            "--out", str(tmp_path / "b")], capsys)
    a = stored(tmp_path / "a")
    assert a == stored(tmp_path / "b")
    assert (a["lr"], a["lr_schedule"], a["net_options"], a["ema_stds"]) == (0.003, "cosine", {"width": 16, "depth": 1}, [0.07])
    # The file's settings count as given: resuming with another file's lr changes the run (a new phase).
    (tmp_path / "more.toml").write_text(TOML.replace("steps = 3", "steps = 5").replace("lr = 0.001", "lr = 0.0005"))
    cli_ok(["train", "--config", str(tmp_path / "more.toml"), "--out", str(tmp_path / "a")], capsys)
    assert stored(tmp_path / "a")["phases"][0]["changes"] == {"steps": [3, 5], "lr": [0.003, 0.0005]}


@pytest.mark.parametrize("text, names", [
    ("lr = 0.001\nlearning-rate = 3\n", ["learning-rate", "unknown option"]),
    ("lr = [", ["--config", "TOML"]),
    ("steps = 'many'\n", ["steps", "many"]),
])
def test_bad_config_files_are_refused_in_one_line(tmp_path, capsys, text, names):
    (tmp_path / "run.toml").write_text(text)
    cli_error(["train", "--config", str(tmp_path / "run.toml"), "--out", str(tmp_path / "run")], capsys, names, roots=[tmp_path])


def test_a_missing_config_file_is_named(tmp_path, capsys):
    cli_error(["train", "--config", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "run")], capsys, ["nope.toml", "does not exist"], roots=[tmp_path])


def test_recipe_options_are_refused_for_other_families(tmp_path, capsys):
    cli_error(["train", "--family", "gan", "--data", "moons", "--tensorboard", "--out", str(tmp_path / "run")], capsys,
              ["--tensorboard", "--family gan"], roots=[tmp_path])
