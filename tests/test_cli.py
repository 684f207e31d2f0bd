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
        (["--sigma-max", "eighty"], ["--sigma-max", "'eighty'", "not a number"]),
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


# ---------------------------------------------------------------------------
# What a first user meets: help, progress bars, pictures, fitted steps.

COMMANDS = [["presets"], ["sample"], ["train"], ["optimize-steps"], ["demo"], ["autoencoder", "train"], ["autoencoder", "eval"]]


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_every_command_takes_quiet(command):
    result = CliRunner().invoke(cli, command + ["--help"])
    assert result.exit_code == 0 and "--quiet" in result.output


def test_sample_help_lists_every_solver_and_discretization():
    import re

    import samplers

    text = re.sub(r"-\s+", "-", " ".join(CliRunner().invoke(cli, ["sample", "--help"]).output.split()))
    for name in samplers.names() + samplers.discretization_names():
        assert re.search(rf"[ :]{re.escape(name)}[,. ]", text), name
    assert "see the README" not in text


def _stderr_on_a_terminal(args, cwd):
    """Run `edm-space ARGS` with stderr on a pseudo-terminal; what the terminal showed."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal 120 columns wide
    process = subprocess.Popen([sys.executable, "-c", "from edm_space.cli import main; main()", *args], cwd=cwd,
                               stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        shown += chunk
    process.wait(timeout=120)
    os.close(master)
    assert process.returncode == 0, shown[-2000:]
    return shown.decode(errors="replace")


def test_progress_bars_only_on_a_terminal_and_never_with_quiet(tmp_path):
    args = ["sample", "--data-size", "50", "--n", "4", "--solver", "euler", "--steps", "30"]
    assert "euler x 30" in _stderr_on_a_terminal([*args, "--out", str(tmp_path / "a.npz")], tmp_path)
    quiet = _stderr_on_a_terminal([*args, "--quiet", "--out", str(tmp_path / "b.npz")], tmp_path)
    assert "euler x 30" not in quiet
    logged = run(*args, "--out", str(tmp_path / "c.npz"), cwd=tmp_path)  # stderr to a pipe, as in a log file
    assert logged.returncode == 0 and logged.stderr == ""


def test_a_progress_bar_shows_each_steps_numbers_once(monkeypatch):
    import io
    import re

    import tqdm.auto

    import samplers
    import torch

    shown = io.StringIO()
    real = tqdm.auto.tqdm
    monkeypatch.setattr(tqdm.auto, "tqdm", lambda *a, **k: real(*a, **{**k, "file": shown, "mininterval": 0, "miniters": 1}))
    samplers.sample(lambda x, sigma: x * 0, torch.zeros(2, 2, dtype=torch.float64), solver="euler", num_steps=6, progress=True)
    states = [(int(m.group(1)), int(m.group(2))) for m in re.finditer(r"(\d+)/6 \[[^\]]*nfe=(\d+)", shown.getvalue())]
    assert states, shown.getvalue()
    # Euler spends one evaluation per step: after k steps the bar shows k steps and nfe = k, each nfe once
    assert all(k == nfe for k, nfe in states), states
    assert [nfe for _, nfe in states] == sorted(set(nfe for _, nfe in states))


def test_image_grids_are_captioned_with_the_sampler(tmp_path, monkeypatch):
    from edm_space import outputs
    from edm_space.cli import main

    captions = []
    real = outputs.image_grid_png
    monkeypatch.setattr(outputs, "image_grid_png", lambda path, images, caption=None, **k: (captions.append(caption), real(path, images, caption=caption, **k)))
    main(["sample", "--data", "digits", "--data-size", "200", "--n", "4", "--steps", "3", "--class", "3", "--guidance", "2",
          "--out", str(tmp_path / "s.png")])
    assert captions == ["4 samples of exact digits, edm + heun, 5 NFE, class 3, w = 2"]


def test_steps_fitted_for_another_solver_or_nfe_warn_naming_both(tmp_path, capsys):
    from samplers.optimize import save_levels

    from helpers_cli import cli_run

    path = str(tmp_path / "steps.json")
    save_levels(path, [80.0, 10.0, 2.0, 0.5, 0.1, 0.0], solver="heun", nfe=9, formulation="edm")
    base = ["sample", "--data-size", "50", "--n", "4", "--discretization", path]
    code, _, err = cli_run([*base, "--solver", "heun", "--out", tmp_path / "a.npz"], capsys)
    assert code == 0 and "warning" not in err  # fitted for heun at 9 NFE: 5 steps, 2 * 5 - 1 evaluations
    code, _, err = cli_run([*base, "--solver", "euler", "--out", tmp_path / "b.npz"], capsys)
    warning = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert code == 0 and len(warning) == 1
    assert "heun at 9 NFE" in warning[0] and "euler at 5 NFE" in warning[0]
