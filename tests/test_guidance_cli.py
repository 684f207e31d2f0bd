"""Guidance on the command line: label dropout in `edm-space train`, `edm-space sample --guidance`.

The references do not go through the code under test: label dropout is counted
in the labels a recording network receives and compared with a binomial law;
guided samples are recomputed from the latents the command draws (seed i's
N(0, I)) with a brute-force posterior mean (tests/conftest.py) or with the two
denoisers called separately and mixed by hand, D_w = D_guide + w (D - D_guide);
forward passes and rows are counted from the solver's step count and EDM's
time steps written out (Karras et al. 2022, eq. 5).
"""

from __future__ import annotations

import math
import re
from typing import Dict, List, Tuple

import numpy as np
import pytest
import scipy.stats
import torch

import presets
import samplers
from conftest import finite_set_denoiser, one_torch_thread
from edm_space.cli import main
from edm_space.data import load
from edm_space.networks.mlp import MLP
from edm_space.seeding import SeededNoise
from edm_space.training import load_trained
from helpers_cli import cli_error, cli_ok, cli_run

F64 = torch.float64

#: A tiny class-conditional training on the two-class branches toy (label dropout 0.1 by default).
TINY_BRANCHES = ["--data", "branches", "--data-size", "256", "--conditional", "--net-option", "depth=1",
                 "--steps", "3", "--batch", "16", "--warmup", "16"]

# "... 9 denoiser evaluations of the guided denoiser (w = 2, classifier-free): 9 network forward passes of 72 rows in all -> ..."
COST = re.compile(r"(\d+) denoiser evaluations of the guided denoiser \(w = ([^,]+), ([a-z-]+)\): "
                  r"(\d+) network forward passes of (\d+) rows in all")


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def guided_cost(out: str) -> Dict[str, object]:
    """The cost a guided `sample` command printed: evaluations (NFE), weight, kind, passes and rows."""
    found = COST.search(out)
    assert found, out
    nfe, weight, kind, passes, rows = found.groups()
    return {"nfe": int(nfe), "weight": float(weight), "kind": kind, "passes": int(passes), "rows": int(rows)}


def sample_cli(argv: List[str], path, capsys) -> Tuple[np.ndarray, str]:
    """Run `edm-space sample ARGV --out PATH`: (samples, stdout)."""
    out = cli_ok(["sample", *argv, "--out", path], capsys)
    return np.load(path)["samples"], out


def heun_edm_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> List[float]:
    """EDM's time steps (Karras et al. 2022, eq. 5) and the final 0."""
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [(a + i / (steps - 1) * (b - a)) ** rho for i in range(steps)] + [0.0]


def heun_evaluation_sigmas(steps: int) -> List[float]:
    """The sigmas at which EDM's Heun sampler (Algorithm 1) calls the denoiser: each t_i, and t_{i+1} if it is > 0."""
    t = heun_edm_sigmas(steps)
    out = []
    for i in range(steps):
        out.append(t[i])
        if t[i + 1] > 0:
            out.append(t[i + 1])
    return out


# --------------------------------------------------------------------------- label dropout in training


def recorded_training(p: float, run_dir, capsys, monkeypatch, steps: int = 20, batch: int = 256):
    """Train a tiny conditional MLP with label dropout p; the (x, c_noise, labels) of every training forward pass."""
    seen = []
    forward = MLP.forward

    def recording(self, x, c_noise, labels=None):
        if self.training:
            seen.append((x.detach().clone(), c_noise.detach().clone(), labels.detach().clone()))
        return forward(self, x, c_noise, labels)

    monkeypatch.setattr(MLP, "forward", recording)
    cli_ok(["train", "--data", "branches", "--data-size", "512", "--conditional", "--label-dropout", p,
            "--net-option", "width=8", "--net-option", "depth=1", "--steps", steps, "--batch", batch,
            "--warmup", batch, "--out", run_dir], capsys)
    monkeypatch.setattr(MLP, "forward", forward)
    # one training forward pass per step, and one on the next step's batch that confirms the last checkpoint
    assert len(seen) == steps + 1
    return seen


def test_label_dropout_nulls_a_binomial_fraction_of_rows_and_changes_no_other_draw(tmp_path, capsys, monkeypatch):
    p, steps, batch = 0.25, 20, 256
    dropped = recorded_training(p, tmp_path / "dropout", capsys, monkeypatch, steps, batch)
    kept = recorded_training(0.0, tmp_path / "none", capsys, monkeypatch, steps, batch)
    batches = len(dropped)
    for record in (dropped, kept):
        labels = torch.cat([labels for _, _, labels in record])
        assert labels.shape == (batches * batch, 2)
        assert bool(((labels == 0) | (labels == 1)).all()) and bool((labels.sum(dim=1) <= 1).all())  # one-hot or null
    null_dropped = torch.cat([labels.sum(dim=1) == 0 for _, _, labels in dropped])
    null_kept = torch.cat([labels.sum(dim=1) == 0 for _, _, labels in kept])
    # --label-dropout 0: no row is null; p: each row independently null with probability p, so the
    # count over all rows is Binomial(rows, p) (two-sided exact test).
    assert int(null_kept.sum()) == 0
    count = int(null_dropped.sum())
    assert scipy.stats.binomtest(count, batches * batch, p).pvalue > 1e-4, count
    # per batch: Binomial(batch, p) each, so every batch's count is within 5 of its sd (4.5e-6 false-alarm odds per batch)
    per_batch = null_dropped.reshape(batches, batch).sum(dim=1).double()
    assert bool(((per_batch - batch * p).abs() <= 5 * math.sqrt(batch * p * (1 - p))).all()), per_batch.tolist()
    # the rows that were not nulled carry the same labels as without dropout, and the dropout draw
    # comes last: the noisy inputs and noise levels of every step are those of the run without it
    labels_dropped = torch.cat([labels for _, _, labels in dropped])
    labels_kept = torch.cat([labels for _, _, labels in kept])
    assert torch.equal(labels_dropped[~null_dropped], labels_kept[~null_dropped])
    for (x_a, c_a, _), (x_b, c_b, _) in zip(dropped, kept):
        assert torch.equal(c_a, c_b) and torch.equal(x_a, x_b)


# --------------------------------------------------------------------------- guidance of the exact denoiser

EXACT = ["--data", "branches", "--data-size", "300", "--n", "6", "--solver", "heun", "--steps", "5"]


def test_exact_guidance_one_is_the_class_model_and_zero_the_unconditional_one(tmp_path, capsys):
    conditional, _ = sample_cli(EXACT + ["--class", "1"], tmp_path / "c.npz", capsys)
    weight_one, out = sample_cli(EXACT + ["--class", "1", "--guidance", "1"], tmp_path / "w1.npz", capsys)
    unconditional, _ = sample_cli(EXACT, tmp_path / "u.npz", capsys)
    weight_zero, _ = sample_cli(EXACT + ["--class", "1", "--guidance", "0"], tmp_path / "w0.npz", capsys)
    assert np.array_equal(weight_one, conditional)  # bit for bit
    assert np.array_equal(weight_zero, unconditional)
    assert not np.allclose(conditional, unconditional, atol=1e-3)  # the class matters, so the two checks are not vacuous
    # w = 1 is exactly the conditional model: one pass of 6 rows per evaluation, no null-label rows;
    # Heun with 5 steps makes 2 * 5 - 1 evaluations
    cost = guided_cost(out)
    assert cost["nfe"] == 9 and cost["passes"] == 9 and cost["rows"] == 9 * 6 and cost["kind"] == "classifier-free"


@pytest.mark.parametrize("weight", [2.0, -0.5])
def test_exact_guided_samples_equal_a_hand_guided_sampler(weight, tmp_path, capsys):
    seeds = [3, 4, 5, 6, 7]
    samples, _ = sample_cli(["--data", "branches", "--data-size", "300", "--seeds", "3-7", "--class", "0",
                             "--guidance", weight, "--solver", "heun", "--steps", "6"], tmp_path / "s.npz", capsys)
    # the command's exact denoiser averages over load(branches, n=300, seed=--seed), here the default 0
    points, labels = load("branches", n=300, seed=0, with_labels=True)
    everything, class_zero = finite_set_denoiser(points), finite_set_denoiser(points[labels == 0])

    def guided(x_hat, sigma):
        return everything(x_hat, sigma) + weight * (class_zero(x_hat, sigma) - everything(x_hat, sigma))

    latents = SeededNoise(seeds).randn([len(seeds), 2], dtype=F64)  # seed i's own N(0, I) draw, as `sample` uses
    with torch.no_grad():
        expected = samplers.sample(guided, latents, formulation=presets.get("edm"), solver="heun", num_steps=6)
    np.testing.assert_allclose(samples, expected.numpy(), rtol=0, atol=1e-9)


def test_exact_data_without_labels_refuses_guidance(tmp_path, capsys):
    cli_error(["sample", "--data", "moons", "--data-size", "50", "--n", "2", "--steps", "2", "--guidance", "2",
               "--out", tmp_path / "s.npz"], capsys, names=["--guidance", "moons"], roots=[tmp_path])


# --------------------------------------------------------------------------- guidance of trained models


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny runs: a conditional model, a smaller guide, one without label dropout, one on 3-D points."""
    root = tmp_path_factory.mktemp("guidance-runs")
    points = np.random.default_rng(0).standard_normal((256, 3)).astype(np.float32)
    np.savez(root / "points3d.npz", x=points, labels=np.arange(256) % 2)
    settings = {
        "main": TINY_BRANCHES + ["--net-option", "width=16"],
        "guide": TINY_BRANCHES + ["--net-option", "width=8", "--seed", "1"],
        "no-dropout": TINY_BRANCHES + ["--net-option", "width=16", "--label-dropout", "0"],
        "points3d": [*TINY_BRANCHES[2:], "--data", root / "points3d.npz", "--net-option", "width=8"],
        # labelled data trained WITHOUT --conditional: the run records the data's classes, the network ignores them
        "unconditional": [a for a in TINY_BRANCHES if a != "--conditional"] + ["--net-option", "width=8"],
    }
    paths = {}
    with one_torch_thread():
        for name, argv in settings.items():
            paths[name] = str(root / name)
            main(["train", *[str(a) for a in argv], "--out", paths[name]])
    return paths


TRAINED = ["--n", "5", "--class", "1", "--solver", "heun", "--steps", "4"]


def trained_reference(run: str, weight: float, guide_run=None, steps: int = 4, seeds=range(5), label: int = 1) -> np.ndarray:
    """Heun on the run's own ODE with D_w = D_guide + w (D - D_guide), the two denoisers called separately."""
    denoiser, config, item_shape, num_classes, _ = load_trained(run)
    guide = load_trained(guide_run)[0] if guide_run else None
    seeds = list(seeds)
    labels = torch.zeros(len(seeds), num_classes, dtype=F64)
    labels[:, label] = 1.0

    def guided(x_hat, sigma):
        conditional = denoiser(x_hat, sigma, labels)
        other = guide(x_hat, sigma, labels) if guide else denoiser(x_hat, sigma, torch.zeros_like(labels))
        return other + weight * (conditional - other)

    latents = SeededNoise(seeds).randn([len(seeds), *item_shape], dtype=F64)
    with torch.no_grad():
        return samplers.sample(guided, latents, formulation=denoiser.formulation, solver="heun", num_steps=steps).numpy()


def test_classifier_free_guidance_of_a_trained_run(runs, tmp_path, capsys):
    samples, out = sample_cli(["--ckpt", runs["main"], *TRAINED, "--guidance", "2"], tmp_path / "s.npz", capsys)
    cost = guided_cost(out)
    assert cost == {"nfe": 7, "weight": 2.0, "kind": "classifier-free", "passes": 7, "rows": 7 * 2 * 5}
    np.testing.assert_allclose(samples, trained_reference(runs["main"], 2.0), rtol=0, atol=1e-5)


def test_autoguidance_by_a_second_run_costs_two_network_calls_per_evaluation(runs, tmp_path, capsys):
    samples, out = sample_cli(["--ckpt", runs["main"], *TRAINED, "--guidance", "2.5", "--guide", runs["guide"]],
                              tmp_path / "s.npz", capsys)
    cost = guided_cost(out)
    assert cost == {"nfe": 7, "weight": 2.5, "kind": "autoguidance", "passes": 2 * 7, "rows": 2 * 7 * 5}
    assert runs["guide"] in out
    np.testing.assert_allclose(samples, trained_reference(runs["main"], 2.5, runs["guide"]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("interval", [(0.5, 10.0), (0.0, 1.0), (100.0, math.inf)])
def test_guidance_interval_guides_exactly_the_evaluations_inside(interval, runs, tmp_path, capsys):
    lo, hi = interval
    text = f"{lo:g},{hi:g}"
    _, out = sample_cli(["--ckpt", runs["main"], *TRAINED, "--guidance", "3", "--guidance-interval", text],
                        tmp_path / "s.npz", capsys)
    inside = sum(lo < s <= hi for s in heun_evaluation_sigmas(4))  # EDM Heun's 7 evaluations at sigma_min 0.002, sigma_max 80
    cost = guided_cost(out)
    # every evaluation is one pass; inside the interval it has 2 x 5 rows, outside 5
    assert cost["passes"] == 7 and cost["rows"] == 5 * (7 + inside), (inside, cost)


def test_a_run_without_label_dropout_needs_a_guide(runs, tmp_path, capsys):
    cli_error(["sample", "--ckpt", runs["no-dropout"], *TRAINED, "--guidance", "2", "--out", tmp_path / "s.npz"],
              capsys, names=["--label-dropout", "--guide"], roots=[tmp_path])
    _, out = sample_cli(["--ckpt", runs["no-dropout"], *TRAINED, "--guidance", "2", "--guide", runs["guide"]],
                        tmp_path / "s.npz", capsys)
    assert guided_cost(out)["kind"] == "autoguidance"  # autoguidance needs no null label


@pytest.mark.parametrize("interval", ["5,1", "abc", "-1,2", "1", "1,2,3", "nan,2", "1,nan", "2,2"])
def test_bad_guidance_interval(interval, runs, tmp_path, capsys):
    cli_error(["sample", "--ckpt", runs["main"], *TRAINED, "--guidance", "2", "--guidance-interval", interval,
               "--out", tmp_path / "s.npz"], capsys, names=["--guidance-interval"], roots=[tmp_path])


@pytest.mark.parametrize("argv, names", [
    (["--guidance-interval", "0.3,5"], ["--guidance-interval", "--guidance"]),
    (["--guide", "GUIDE"], ["--guide", "--guidance"]),
    (["--guidance", "nan"], ["--guidance"]),
    (["--guidance", "inf"], ["--guidance"]),
    (["--guidance", "2", "--guide", "POINTS3D"], ["--guide", "[3]", "[2]"]),
])
def test_bad_guidance_options(argv, names, runs, tmp_path, capsys):
    argv = [{"GUIDE": runs["guide"], "POINTS3D": runs["points3d"]}.get(a, a) for a in argv]
    cli_error(["sample", "--ckpt", runs["main"], *TRAINED, *argv, "--out", tmp_path / "s.npz"], capsys,
              names=names, roots=[tmp_path])


def test_guide_without_a_trained_model_is_refused(runs, tmp_path, capsys):
    cli_error(["sample", *EXACT, "--class", "1", "--guidance", "2", "--guide", runs["guide"], "--out", tmp_path / "s.npz"],
              capsys, names=["--guide", "--ckpt"], roots=[tmp_path])


@pytest.mark.parametrize("argv, names", [
    (["--class", "1"], ["--class", "--conditional"]),
    (["--guidance", "3"], ["--guidance", "unconditional", "--guide"]),
    (["--class", "1", "--guidance", "3"], ["--class"]),
])
def test_class_and_classifier_free_guidance_of_an_unconditional_run_are_refused(argv, names, runs, tmp_path, capsys):
    # the run was trained on the labelled branches without --conditional: its config records 2 classes
    assert load_trained(runs["unconditional"])[3] == 2 and not load_trained(runs["unconditional"])[1].conditional
    cli_error(["sample", "--ckpt", runs["unconditional"], "--n", "3", "--steps", "3", *argv, "--out", tmp_path / "s.npz"],
              capsys, names=names, roots=[tmp_path])


def test_guide_step_without_guide_is_refused(runs, tmp_path, capsys):
    cli_error(["sample", "--ckpt", runs["main"], *TRAINED, "--guidance", "2", "--guide-step", "5", "--out", tmp_path / "s.npz"],
              capsys, names=["--guide-step", "--guide"], roots=[tmp_path])


def test_an_interval_without_a_sampling_level_warns_that_it_guides_nothing(runs, tmp_path, capsys):
    code, out, err = cli_run(["sample", "--ckpt", runs["main"], *TRAINED, "--guidance", "2", "--guidance-interval", "1e9,2e9",
                              "--out", tmp_path / "s.npz"], capsys)
    assert code == 0 and guided_cost(out)["rows"] == 5 * 7  # nothing guided: one row per item and evaluation
    warning = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and "--guidance-interval 1e9,2e9" in warning[0] and "guide nothing" in warning[0]
    # an interval holding a level prints no warning
    code, _, err = cli_run(["sample", "--ckpt", runs["main"], *TRAINED, "--guidance", "2", "--guidance-interval", "0.5,10",
                            "--out", tmp_path / "t.npz"], capsys)
    assert code == 0 and "warning" not in err


def test_an_overflowing_guidance_weight_is_named(tmp_path, capsys):
    line = cli_error(["sample", *EXACT, "--class", "1", "--guidance", "1e308", "--out", tmp_path / "s.npz"], capsys,
                     names=["--guidance", "1e+308"], roots=[tmp_path])
    assert "non-finite" in line and "steps" not in line.split(";")[-1]  # the cure named is the weight, not more steps
