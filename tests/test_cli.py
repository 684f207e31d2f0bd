"""The command line as a user meets it: help, the sample command's output, and one-line errors."""

import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import presets
from edm_space.cli import cli


def run(*args, cwd=None):
    """Run `edm-space` in a fresh interpreter, as a user would."""
    return subprocess.run(
        [sys.executable, "-c", "from edm_space.cli import main; main()", *args],
        capture_output=True, text=True, cwd=cwd, timeout=120,
    )


@pytest.mark.parametrize("command", [[], ["presets"], ["sample"], ["train"], ["demo"]])
def test_every_command_has_help(command):
    result = CliRunner().invoke(cli, command + ["--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output and "--help" in result.output


def test_presets_table_lists_every_preset_with_its_formulas():
    result = CliRunner().invoke(cli, ["presets"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    for name in presets.names():
        row = next(line for line in lines if line.split()[0] == name)
        if name == "edm":
            assert "sd^2/(sigma^2+sd^2)" in row and "ln(sigma)/4" in row
        if name == "flow":
            assert "t/(1 - t)" in row and "1 - t" in row


def test_sample_writes_npz_and_png(tmp_path):
    out = tmp_path / "s.npz"
    result = run("sample", "--preset", "edm", "--solver", "heun", "--steps", "8", "--data", "moons",
                 "--n", "50", "--data-size", "300", "--seed", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    with np.load(out) as archive:
        assert archive["samples"].shape == (50, 2)
        assert np.isfinite(archive["samples"]).all()
        assert archive["seeds"].tolist() == list(range(3, 53))
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "15 denoiser evaluations" in result.stdout  # heun: 2N - 1


def test_sample_depends_on_its_own_seed_only(tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    common = ["sample", "--preset", "vp", "--solver", "euler", "--steps", "6", "--churn", "5", "--data-size", "200"]
    assert run(*common, "--seeds", "0-9", "--out", str(a)).returncode == 0
    assert run(*common, "--seeds", "7", "--out", str(b)).returncode == 0
    with np.load(a) as big, np.load(b) as single:
        # equal up to the rounding of batched matrix products
        np.testing.assert_allclose(big["samples"][7], single["samples"][0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "args, names",
    [
        (["--preset", "nope"], ["'nope'", "edm", "sd3"]),
        (["--solver", "nope"], ["'nope'", "heun", "euler"]),
        (["--discretization", "nope"], ["'nope'", "edm", "uniform-t", "log-sigma"]),
        (["--sigma-min", "5", "--sigma-max", "1"], ["sigma_min = 5", "sigma_max = 1"]),
        (["--steps", "0"], ["num_steps = 0", ">= 1"]),
        (["--data", "nope"], ["'nope'", "moons"]),
        (["--out", "x.txt"], ["x.txt", ".npz", ".png"]),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, names):
    out = "s.npz"
    result = run("sample", "--n", "5", "--data-size", "50", "--out", out, *args, cwd=tmp_path)
    assert result.returncode != 0
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and message.startswith("error:"), message
    assert "Traceback" not in result.stderr
    for name in names:
        assert name in message
    assert os.listdir(tmp_path) == []


def test_trajectory_records_every_step(tmp_path):
    out = tmp_path / "t.npz"
    result = run("sample", "--preset", "flow", "--solver", "euler", "--steps", "5", "--n", "20", "--data-size", "100",
                 "--trajectory", "--out", str(out))
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "t_trajectory.npz") as trajectory, np.load(out) as final:
        assert trajectory["x"].shape == (5, 20, 2) and trajectory["denoised"].shape == (5, 20, 2)
        np.testing.assert_allclose(trajectory["t"], [1 - 1e-9, 0.8, 0.6, 0.4, 0.2], atol=1e-12)
        np.testing.assert_array_equal(trajectory["x"][-1], final["samples"])  # the last step's state is the sample
    assert (tmp_path / "t_trajectory.png").exists()


def test_solver_options_reach_the_solver_and_foreign_ones_are_refused(tmp_path):
    result = run("sample", "--solver", "heun", "--solver-option", "eta=1", "--n", "3", "--data-size", "20", cwd=tmp_path)
    assert result.returncode != 0 and "'eta'" in result.stderr and "alpha" in result.stderr
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    base = ["sample", "--preset", "edm", "--solver", "ddim", "--steps", "6", "--n", "4", "--data-size", "50"]
    assert run(*base, "--solver-option", "eta=0", "--out", str(a)).returncode == 0
    assert run(*base, "--solver-option", "eta=1", "--out", str(b)).returncode == 0
    with np.load(a) as x0, np.load(b) as x1:
        assert not np.allclose(x0["samples"], x1["samples"])


def test_demo_writes_its_table_and_figure(tmp_path):
    import json

    out = tmp_path / "demo"
    result = run("demo", "--out", str(out), "--steps", "40", "--n", "300")
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert {(r["preset"], r["solver"]) for r in results["rows"]} == {(p, s) for p in ("edm", "flow") for s in ("heun", "euler")}
    for row in results["rows"]:
        assert row["nfe"] == (2 * row["steps"] - 1 if row["solver"] == "heun" else row["steps"])
        assert 0 < row["sw2_err"] < row["sw2"]  # a bootstrap spread, smaller than the distance it qualifies
    assert "| edm | heun |" in result.stdout and "sliced W2" in result.stdout
    # Heun's poor score at 5 NFE (3 steps) comes with its reason, once
    assert result.stdout.count("moves about half as far as Euler's step") == 1
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "runs" / "edm" / "checkpoints").is_dir()
