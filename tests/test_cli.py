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


@pytest.mark.parametrize("command", [[], ["presets"], ["sample"]])
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
