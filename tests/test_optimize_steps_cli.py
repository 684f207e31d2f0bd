"""`edm-space optimize-steps`: time steps fitted from the command line, checked against an independent solution.

The held-out errors the command writes are recomputed here: the end points of the
probability-flow ODE by a fine RK4 in u = ln sigma written in this file (the command
uses scipy's DOP853), the latents from their seeds (sample i from its own
torch.Generator), the starting levels from EDM's eq. 5, and the samples either from
`edm-space sample --discretization FILE.json` or from a hand-written Euler loop
(EDM Alg. 1 without its correction).
"""

import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import samplers
from edm_space import data
from edm_space.training import load_trained
from helpers_cli import cli_error, cli_ok, cli_subprocess, subprocess_env, wait_until

F64 = torch.float64
SIGMA_MAX, SIGMA_MIN = 80.0, 0.002  # the command's defaults
SIGMA_END = 1e-4  # where the command's reference stops: min(1e-4, sigma_min / 10), then x = D(x; sigma_end)

#: The exact 2-D target: the posterior mean of 500 points of 8gaussians (data seed 0, the command's default).
EXACT = ["--data", "8gaussians", "--data-size", "500"]
CALIBRATION, HELD_OUT, BUDGET = 32, 32, 6


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def seeded_latents(seeds, shape):
    """Latent i drawn from its own generator seeded with seeds[i], as the command draws them."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s), dtype=F64) for s in seeds])


def finite_set_denoiser(points: torch.Tensor):
    """D(x; sigma) = sum_j softmax_j(-|x - y_j|^2 / (2 sigma^2)) y_j: the posterior mean of the uniform law on the points."""
    y = points.to(F64).reshape(len(points), -1)

    def D(x, sigma):
        sigma = torch.as_tensor(sigma, dtype=F64).reshape(-1, 1)
        weights = torch.softmax(-torch.cdist(x, y) ** 2 / (2 * sigma**2), dim=1)
        return weights @ y

    return D


def rk4_end_points(D, z, steps=3000):
    """x(0) of dx/du = x - D(x; e^u) (EDM eq. 4 in u = ln sigma) from x = z sigma_max, by RK4 down to SIGMA_END,
    then x = D(x; SIGMA_END) as the command finishes its reference."""
    u0, u1 = math.log(SIGMA_MAX), math.log(SIGMA_END)
    h = (u1 - u0) / steps
    x = z * SIGMA_MAX
    f = lambda u, x: x - D(x, torch.full((len(x),), math.exp(u), dtype=F64))  # noqa: E731
    for i in range(steps):
        u = u0 + i * h
        k1 = f(u, x)
        k2 = f(u + h / 2, x + h / 2 * k1)
        k3 = f(u + h / 2, x + h / 2 * k2)
        k4 = f(u + h, x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return D(x, torch.full((len(x),), SIGMA_END, dtype=F64))


def edm_levels(n):
    """EDM eq. 5 with rho = 7 on [SIGMA_MIN, SIGMA_MAX]: the steps the fit starts from."""
    i = np.arange(n)
    return (SIGMA_MAX ** (1 / 7) + i / (n - 1) * (SIGMA_MIN ** (1 / 7) - SIGMA_MAX ** (1 / 7))) ** 7


def euler_end_points(D, z, levels):
    """EDM Alg. 1 without the correction on sigma_0 > ... > sigma_{N-1} > 0 = sigma_N: x <- x + (s' - s)(x - D(x; s)) / s."""
    levels = list(levels) + [0.0]
    x = z * levels[0]
    for s, s_next in zip(levels[:-1], levels[1:]):
        x = x + (s_next - s) * (x - D(x, torch.full((len(x),), s, dtype=F64))) / s
    return x


def rms(a, b):
    return float((a - b).pow(2).mean().sqrt())


def test_fitted_steps_cut_the_held_out_error_and_feed_sample(tmp_path, capsys):
    out = tmp_path / "steps.json"
    printed = cli_ok(["optimize-steps", *EXACT, "--solver", "dpm++2m", "--nfe", BUDGET, "--calibration", CALIBRATION,
                      "--held-out", HELD_OUT, "--max-evaluations", 60, "--out", out], capsys)
    payload = json.loads(out.read_text())
    sigmas = payload["sigmas"]
    assert len(sigmas) == samplers.get("dpm++2m").steps_for_nfe(BUDGET) == BUDGET
    assert sigmas[0] == SIGMA_MAX and all(a > b > 0 for a, b in zip(sigmas, sigmas[1:]))
    before, after = payload["held_out_error_before"], payload["held_out_error_after"]
    assert after < 0.8 * before
    assert f"{before:.3g}" in printed and f"{after:.3g}" in printed and str(out) in printed

    # The held-out errors again, from the samples `edm-space sample` draws and an RK4 solution of the ODE.
    held_seeds = range(CALIBRATION, CALIBRATION + HELD_OUT)
    reference = rk4_end_points(finite_set_denoiser(data.load("8gaussians", n=500, seed=0)), seeded_latents(held_seeds, (2,)))
    start = tmp_path / "rho7.json"
    start.write_text(json.dumps({"sigmas": edm_levels(BUDGET).tolist()}))
    recomputed = {}
    for name, levels in (("after", out), ("before", start)):
        npz = tmp_path / f"{name}.npz"
        printed = cli_ok(["sample", *EXACT, "--solver", "dpm++2m", "--discretization", levels,
                          "--seeds", f"{CALIBRATION}-{CALIBRATION + HELD_OUT - 1}", "--out", npz], capsys)
        assert f"{BUDGET} steps, {BUDGET} denoiser evaluations" in printed  # the NFE the steps were fitted for
        recomputed[name] = rms(torch.from_numpy(np.load(npz)["samples"]), reference)
    assert recomputed["after"] == pytest.approx(after, rel=1e-4)
    assert recomputed["before"] == pytest.approx(before, rel=1e-4)


@pytest.mark.parametrize("args, out_name, names", [
    (["--solver", "ancestral", "--nfe", "6"], "steps.json", ["ancestral", "stochastic"]),  # no ODE solution to fit to
    (["--solver", "heun", "--nfe", "2"], "steps.json", ["heun", "2"]),                    # one Heun step: nothing to fit
    (["--solver", "nope", "--nfe", "6"], "steps.json", ["nope", "dpm++2m"]),              # names the valid solvers
    (["--solver", "dpm++2m", "--nfe", "6"], "steps.txt", ["--out", ".json"]),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, out_name, names):
    cli_error(["optimize-steps", *EXACT, *args, "--calibration", 4, "--held-out", 4, "--max-evaluations", 5,
               "--out", tmp_path / out_name], capsys, names=names, roots=[tmp_path])


def test_optimize_steps_of_a_trained_run(tmp_path, capsys):
    run = tmp_path / "run"
    cli_ok(["train", "--data", "moons", "--data-size", 256, "--net-option", "width=16", "--net-option", "depth=1",
            "--steps", 5, "--batch", 16, "--warmup", 16, "--out", run], capsys)
    out = tmp_path / "steps.json"
    calibration, held_out, budget = 8, 8, 4
    cli_ok(["optimize-steps", "--ckpt", run, "--solver", "euler", "--nfe", budget, "--calibration", calibration,
            "--held-out", held_out, "--max-evaluations", 20, "--out", out], capsys)
    payload = json.loads(out.read_text())
    sigmas = payload["sigmas"]
    assert len(sigmas) == budget and sigmas[0] == SIGMA_MAX and all(a > b > 0 for a, b in zip(sigmas, sigmas[1:]))
    assert str(run) in payload["source"] and payload["formulation"] == "edm" and payload["nfe"] == budget

    # Both reported errors from a hand-written Euler loop against an RK4 solution of the trained model's ODE.
    denoiser = load_trained(str(run))[0]
    D = lambda x, sigma: denoiser(x, sigma).to(F64)  # noqa: E731
    z = seeded_latents(range(calibration, calibration + held_out), (2,))
    with torch.no_grad():
        reference = rk4_end_points(D, z)
        before = rms(euler_end_points(D, z, edm_levels(budget)), reference)
        after = rms(euler_end_points(D, z, sigmas), reference)
    assert payload["held_out_error_before"] == pytest.approx(before, rel=1e-4)
    assert payload["held_out_error_after"] == pytest.approx(after, rel=1e-4)


@pytest.mark.parametrize("class_label", [None, 1])
def test_optimize_steps_of_a_class_conditional_run(tmp_path, capsys, class_label):
    """A conditional run is fitted for one label: the null label (all-zero one-hot, unconditional) by default."""
    run = tmp_path / "run"
    cli_ok(["train", "--data", "branches", "--data-size", 256, "--conditional", "--net-option", "width=16", "--net-option", "depth=1",
            "--steps", 5, "--batch", 16, "--warmup", 16, "--out", run], capsys)
    out = tmp_path / "steps.json"
    calibration, held_out, budget = 8, 8, 4
    label_args = [] if class_label is None else ["--class-label", class_label]
    cli_ok(["optimize-steps", "--ckpt", run, "--solver", "euler", "--nfe", budget, "--calibration", calibration,
            "--held-out", held_out, "--max-evaluations", 20, *label_args, "--out", out], capsys)
    payload = json.loads(out.read_text())
    assert ("the null label" if class_label is None else "class 1") in payload["source"]

    denoiser, _, _, num_classes, _ = load_trained(str(run))
    one_hot = torch.zeros(1, num_classes, dtype=F64)
    if class_label is not None:
        one_hot[0, class_label] = 1.0
    D = lambda x, sigma: denoiser(x, sigma, one_hot.expand(len(x), -1)).to(F64)  # noqa: E731
    z = seeded_latents(range(calibration, calibration + held_out), (2,))
    with torch.no_grad():
        reference = rk4_end_points(D, z)
        before = rms(euler_end_points(D, z, edm_levels(budget)), reference)
        after = rms(euler_end_points(D, z, payload["sigmas"]), reference)
    assert payload["held_out_error_before"] == pytest.approx(before, rel=1e-4)
    assert payload["held_out_error_after"] == pytest.approx(after, rel=1e-4)


def test_a_class_label_the_model_lacks_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    cli_ok(["train", "--data", "branches", "--data-size", 256, "--conditional", "--net-option", "width=16", "--net-option", "depth=1",
            "--steps", 1, "--batch", 16, "--warmup", 16, "--out", run], capsys)
    num_classes = load_trained(str(run))[3]
    for args in (["--class-label", str(num_classes)], ["--class-label", "-1"]):
        cli_error(["optimize-steps", "--ckpt", run, "--solver", "euler", "--nfe", 4, "--calibration", 4, "--held-out", 4,
                   "--max-evaluations", 5, *args, "--out", tmp_path / "steps.json"], capsys,
                  names=[args[1], f"0 to {num_classes - 1}"], roots=[tmp_path])
    cli_error(["optimize-steps", *TINY, "--solver", "euler", "--nfe", 4, "--class-label", 0, "--out", tmp_path / "steps.json"], capsys,
              names=["--class-label", "unconditional"], roots=[tmp_path])


# ---------------------------------------------------------------------------
# Starting levels, solver options, the NFE bound, and temporaries left by a kill.

TINY = [*EXACT, "--calibration", 4, "--held-out", 4, "--max-evaluations", 5]


@pytest.mark.parametrize("args, names", [
    (["--solver", "euler", "--nfe", "1000000000"], ["1000000000", "1000"]),  # refused before anything is allocated
    (["--solver", "dpm++3m", "--nfe", "6", "--solver-option", "tylor=true"], ["tylor", "taylor"]),
    (["--solver", "dpm++3m", "--nfe", "6", "--solver-option", "taylor=3"], ["taylor", "true or false"]),
    (["--solver", "euler", "--nfe", "6", "--discretization", "nope"], ["nope", "time-quadratic"]),
])
def test_bad_options_are_one_line_and_write_nothing(tmp_path, capsys, args, names):
    cli_error(["optimize-steps", *TINY, *args, "--out", tmp_path / "steps.json"], capsys, names=names, roots=[tmp_path])


def test_starting_levels_of_the_wrong_length_are_refused(tmp_path, capsys):
    start = tmp_path / "start.json"
    start.write_text(json.dumps({"sigmas": edm_levels(5).tolist()}))
    cli_error(["optimize-steps", *TINY, "--solver", "euler", "--nfe", "6", "--discretization", start, "--out", tmp_path / "steps.json"],
              capsys, names=["start.json", "5", "6"], roots=[tmp_path])


def test_fit_from_a_file_with_solver_options_and_the_analytic_first_step(tmp_path, capsys):
    """The fit starts at the file's levels (log-spaced here), runs dpm++3m with taylor=true and the analytical first
    step (6 NFE buy 7 steps) and records all of it; both held-out errors come back from `edm-space sample` with the
    same options against an RK4 solution."""
    steps = BUDGET + 1
    start = tmp_path / "logsigma.json"
    start.write_text(json.dumps({"sigmas": np.exp(np.linspace(math.log(SIGMA_MAX), math.log(SIGMA_MIN), steps)).tolist()}))
    out = tmp_path / "steps.json"
    options = ["--solver", "dpm++3m", "--solver-option", "taylor=true", "--analytic-first-step"]
    cli_ok(["optimize-steps", *EXACT, *options, "--nfe", BUDGET, "--discretization", start, "--calibration", CALIBRATION,
            "--held-out", HELD_OUT, "--max-evaluations", 40, "--out", out], capsys)
    payload = json.loads(out.read_text())
    assert payload["solver_options"] == {"taylor": True} and payload["analytic_first_step"] is True
    assert payload["initial"] == str(start) and payload["nfe"] == BUDGET and len(payload["sigmas"]) == steps
    assert payload["sigmas"][0] == json.loads(start.read_text())["sigmas"][0]  # sigma_max is the file's first level

    held_seeds = range(CALIBRATION, CALIBRATION + HELD_OUT)
    reference = rk4_end_points(finite_set_denoiser(data.load("8gaussians", n=500, seed=0)), seeded_latents(held_seeds, (2,)))
    for key, levels in (("held_out_error_before", start), ("held_out_error_after", out)):
        npz = tmp_path / "samples.npz"
        printed = cli_ok(["sample", *EXACT, *options, "--discretization", levels,
                          "--seeds", f"{CALIBRATION}-{CALIBRATION + HELD_OUT - 1}", "--out", npz], capsys)
        assert f"{steps} steps, {BUDGET} denoiser evaluations" in printed
        assert rms(torch.from_numpy(np.load(npz)["samples"]), reference) == pytest.approx(payload[key], rel=1e-4)


def test_fit_from_a_named_discretization(tmp_path, capsys):
    """--discretization NAME: with one sampling run allowed the result is the starting levels themselves, here
    log-sigma's, uniform in ln sigma on [sigma_min, sigma_max]."""
    out = tmp_path / "steps.json"
    cli_ok(["optimize-steps", *EXACT, "--solver", "euler", "--nfe", 5, "--discretization", "log-sigma", "--calibration", 4,
            "--held-out", 4, "--max-evaluations", 1, "--out", out], capsys)
    sigmas = json.loads(out.read_text())["sigmas"]
    assert sigmas == pytest.approx(np.exp(np.linspace(math.log(SIGMA_MAX), math.log(SIGMA_MIN), 5)).tolist(), rel=1e-12)


BLOCK_THE_RENAME = (
    "import os, sys, time; os.replace = lambda *a: time.sleep(600); "  # the temporary is written, then the rename waits
    "from edm_space.cli import main; main(sys.argv[1:])"
)


def test_a_temporary_left_by_sigkill_is_removed_by_the_next_run(tmp_path):
    """SIGKILL a real optimize-steps while it writes --out (its rename held back so that the kill lands there): the
    temporary stays; the next optimize-steps into the folder removes it, and leaves a live writer's temporary alone."""
    folder = tmp_path / "out"
    folder.mkdir()
    args = ["optimize-steps", *TINY, "--solver", "euler", "--nfe", 4, "--out", folder / "steps.json"]
    with open(tmp_path / "victim.err", "w") as err:
        victim = subprocess.Popen([sys.executable, "-c", BLOCK_THE_RENAME, *map(str, args)], env=subprocess_env(),
                                  stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_until(lambda: bool(list(folder.glob(".tmp-*.json"))), victim, timeout=240)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    left = list(folder.glob(".tmp-*.json"))
    assert len(left) == 1 and f".tmp-{victim.pid}-" in left[0].name and not (folder / "steps.json").exists()
    live = folder / f".tmp-{os.getpid()}-inprogress.json"  # a writer that still runs: this test process
    live.write_text("{}")

    done = cli_subprocess(args, cwd=tmp_path, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in folder.iterdir()) == sorted([live.name, "steps.json"])
