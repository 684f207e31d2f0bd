"""benchmarks/reference_models.py and benchmarks/solvers_reference.py: their arithmetic against hand computations,
and their committed reports rebuilt byte for byte from the committed JSON."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from conftest import import_benchmark

reference_models = import_benchmark("reference_models")
solvers_reference = import_benchmark("solvers_reference")
learning_curves = import_benchmark("learning_curves")


def test_training_seconds_adds_each_window_images_over_its_rate(tmp_path):
    entries = [{"step": 50, "images": 3200, "images_per_s": 160.0}, {"step": 100, "images": 6400, "images_per_s": 320.0},
               {"step": 120, "images": 7680, "images_per_s": 64.0}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    assert reference_models.training_seconds(str(tmp_path)) == pytest.approx(3200 / 160 + 3200 / 320 + 1280 / 64)


def test_training_seconds_stops_at_the_step_asked_for(tmp_path):
    entries = [{"step": 50, "images": 3200, "images_per_s": 160.0}, {"step": 100, "images": 6400, "images_per_s": 320.0},
               {"step": 150, "images": 9600, "images_per_s": 64.0}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    assert reference_models.training_seconds(str(tmp_path), 100) == pytest.approx(3200 / 160 + 3200 / 320)
    assert reference_models.training_seconds(str(tmp_path), 49) == 0.0


def test_learning_curve_rows_give_each_pair_and_the_ratio_of_the_second_to_the_first():
    def point(step, seconds, fd_u, fd_c):
        shares = [0.05] + [0.95 / 9] * 9
        return {"step": step, "seconds": seconds, "unconditional": {"fd": fd_u, "fd_sd": 1.0, "class_shares": shares},
                "conditional": {"fd": fd_c, "fd_sd": 1.0, "class_shares": shares}}
    results = {"models": {"a": [point(250, 100.0, 20.0, 8.0)] * learning_curves.POINTS,
                          "b": [point(1500, 110.0, 30.0, 10.0)] * learning_curves.POINTS}}
    row = learning_curves.rows(results)[0]
    assert row[:3] == ["1/6", "250 / 1,500", "100 / 110"]
    assert row[3] == "20.00 / 30.00 (1.50)" and row[4] == "8.00 / 10.00 (1.25)"
    assert row[5] == "0.050-0.106"


def test_grid_pixels_are_the_8_bit_images():
    samples = torch.tensor([[-1.0, -0.5, 0.0, 0.5], [1.0, 2.0, -3.0, 0.25]]).view(2, 1, 2, 2)
    pixels = reference_models.grid_pixels(reference_models.grid_bytes(samples), (1, 2, 2))
    # (x + 1) * 127.5 rounded half to even, after clamping to [-1, 1]
    assert pixels.tolist() == [[[0, 64], [128, 191]], [[255, 255], [0, 159]]]


def _rows(model, config, fds, sds):
    return [{"model": model, "config": config, "nfe": 8, "set": k, "fd": fd, "fd_sd": sd, "class_shares": [0.1] * 10,
             "rms_to_heun35": 0.1} for k, (fd, sd) in enumerate(zip(fds, sds))]


def test_goal_margin_combines_set_spread_and_bootstrap():
    goal, other = solvers_reference.CONFIGS[0][0], solvers_reference.CONFIGS[2][0]
    rows = _rows("m", goal, [10.0, 12.0], [1.0, 1.0]) + _rows("m", other, [13.0, 15.0], [2.0, 2.0])
    summary = {r["config"]: r for r in solvers_reference.summary(rows, "m")}
    # goal: mean 11, spread sd 1.4142 / sqrt 2 = 1, bootstrap sqrt(1 + 1) / 2 = 0.7071 -> sd sqrt(1.5)
    assert summary[goal]["fd"] == pytest.approx(11.0)
    assert summary[goal]["sd"] == pytest.approx(math.sqrt(1.5))
    # other: mean 14, spread 1, bootstrap sqrt(8) / 2 -> sd sqrt(3); margin 2 sqrt(1.5 + 3)
    assert summary[other]["sd"] == pytest.approx(math.sqrt(3.0))
    assert summary[other]["margin"] == pytest.approx(2 * math.sqrt(4.5))
    assert summary[other]["difference"] == pytest.approx(3.0)
    assert summary[other]["reached"] is (3.0 <= 2 * math.sqrt(4.5))


def test_goal_is_missed_beyond_the_margin():
    goal, other = solvers_reference.CONFIGS[0][0], solvers_reference.CONFIGS[2][0]
    rows = _rows("m", goal, [10.0, 10.0], [0.1, 0.1]) + _rows("m", other, [11.0, 11.0], [0.1, 0.1])
    summary = {r["config"]: r for r in solvers_reference.summary(rows, "m")}
    assert summary[other]["margin"] == pytest.approx(2 * math.hypot(0.1 / np.sqrt(2), 0.1 / np.sqrt(2)))
    assert summary[other]["reached"] is False


@pytest.mark.parametrize("module, stem", [(reference_models, "reference_models"), (solvers_reference, "solvers_reference"),
                                          (learning_curves, "learning_curves")])
def test_committed_report_rebuilds_byte_for_byte(module, stem, tmp_path, monkeypatch):
    import common

    results_dir = os.path.join(common.ROOT, "benchmarks", "results")
    with open(os.path.join(results_dir, stem + ".json")) as file:
        results = json.load(file)
    with open(os.path.join(results_dir, stem + ".md")) as file:
        committed = file.read()
    if module is reference_models:
        picture = stem + ".png"
        assert module.markdown(results, picture) == committed
        with open(os.path.join(module.MODELS_DIR, "README.md")) as file:
            assert module.models_readme(results) == file.read()
    else:
        assert module.markdown(results) == committed


FITTED = [c for c in solvers_reference.CONFIGS if c[3] == "fitted"]


def test_fit_steps_fits_each_configuration_as_stated(tmp_path, monkeypatch):
    """--fit hands edm_space.step_fitting the configuration's solver, options, ODE and FIT's settings."""
    monkeypatch.setattr(solvers_reference, "FITTED_DIR", str(tmp_path))
    seen = []

    def fake_fit(fit, echo):
        seen.append(fit)
        return {"before": 0.2, "after": 0.1}

    monkeypatch.setattr(solvers_reference, "fit_steps_to_file", fake_fit)
    config = next(c for c in FITTED if c[2].get("ode") == "flow")
    path = solvers_reference.fit_steps("sd3-unet", config, lambda _: None)
    (fit,) = seen
    assert fit.out_path == path and os.path.dirname(path) == str(tmp_path)
    assert (fit.solver, fit.nfe, fit.preset, fit.solver_options, fit.analytic_first_step) == ("ipndm", 8, "flow", {"max_order": 3}, True)
    assert fit.run_dir == os.path.join(reference_models.MODELS_DIR, "sd3-unet") and fit.class_label is None  # the null label
    assert {key: getattr(fit, key) for key in solvers_reference.FIT} == solvers_reference.FIT
    own = next(c for c in FITTED if "ode" not in c[2])
    solvers_reference.fit_steps("sd3-unet", own, lambda _: None)
    assert seen[1].preset is None and seen[1].solver_options == {}  # the model's own ODE
    assert len({solvers_reference.fitted_path(m, c) for m in solvers_reference.MODELS for c in FITTED}) == 2 * len(FITTED)


def test_fitted_steps_are_read_for_their_configuration_and_refused_for_another(tmp_path, monkeypatch):
    """The sampling reads the fitted levels; a file fitted for another solver, option or ODE, or none, is a
    one-line error naming --fit."""
    monkeypatch.setattr(solvers_reference, "FITTED_DIR", str(tmp_path))
    config = next(c for c in FITTED if c[2].get("ode") == "flow")
    with pytest.raises(solvers_reference.ConfigError, match="--fit"):
        solvers_reference.fitted_levels("sd3-unet", config, "flow")
    levels = [80.0, 20.0, 6.0, 2.5, 1.2, 0.6, 0.25, 0.08, 0.015]  # 8 NFE with the analytical first step: 9 steps
    spec = {"sigmas": levels, "solver": "ipndm", "nfe": 8, "formulation": "flow", "solver_options": {"max_order": 3},
            "analytic_first_step": True}
    path = solvers_reference.fitted_path("sd3-unet", config)
    with open(path, "w") as file:
        json.dump(spec, file)
    assert solvers_reference.fitted_levels("sd3-unet", config, "flow").tolist() == levels
    denoiser, _, item_shape, _, _ = solvers_reference.load_trained(os.path.join(reference_models.MODELS_DIR, "sd3-unet"))
    x = solvers_reference.sample_config("sd3-unet", denoiser, item_shape, [0, 1], config, torch.zeros(item_shape, dtype=torch.float64))
    assert x.shape == (2, *item_shape) and bool(torch.isfinite(x).all())  # sample_config checks the 8 evaluations itself
    for key, value in (("solver_options", {}), ("formulation", "sd3"), ("nfe", 6), ("analytic_first_step", False)):
        with open(path, "w") as file:
            json.dump({**spec, key: value}, file)
        with pytest.raises(solvers_reference.ConfigError, match="another configuration.*--fit"):
            solvers_reference.fitted_levels("sd3-unet", config, "flow")


def test_the_committed_fitted_steps_match_their_configurations():
    for model in solvers_reference.MODELS:
        for config in FITTED:
            ode = config[2].get("ode") or json.load(open(os.path.join(reference_models.MODELS_DIR, model, "config.json")))["preset"]
            levels = solvers_reference.fitted_levels(model, config, ode)
            assert levels[0] == 80.0 and bool((levels[1:] < levels[:-1]).all()) and bool((levels > 0).all())
