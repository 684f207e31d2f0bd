"""The guidance benchmark (benchmarks/guidance.py).

The quick mode must run end to end for both targets and write standard JSON, Markdown
and plots whose cost columns follow from the sampler's NFE by hand; the toy score is
checked on draws of the branches law made by toy_branches.branches (numpy, not the
mixture's own sampler the benchmark uses), and the paired statistics on numbers whose
answers are worked out by hand.
"""

import io
import json
import math
import os

import pytest
import torch

import samplers
from conftest import benchmark_folders, import_benchmark
from edm_space.classifier import train_classifier
from edm_space.data import load
from edm_space.toy_branches import branches

bg = import_benchmark("guidance")  # benchmarks/guidance.py


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """Both targets in quick mode; the digit classifier is put in the work folder's cache (one epoch, to save time)."""
    out, work = benchmark_folders(tmp_path_factory, "guidance-bench")
    images, labels = load("digits", with_labels=True)
    os.makedirs(os.path.join(work, "classifier"))
    buffer = io.BytesIO()
    torch.save(train_classifier(images, labels, epochs=1).state_dict(), buffer)
    with open(os.path.join(work, "classifier", "classifier-digits-seed0.pt"), "wb") as file:
        file.write(buffer.getvalue())
    results = {t: bg.run_benchmark(bg.make_settings(t, quick=True), out, work, log=lambda _: None) for t in bg.TARGETS}
    return {"results": results, "out": out, "work": work}


def test_quick_mode_writes_standard_json_markdown_and_plots(quick):
    out = quick["out"]
    for target in bg.TARGETS:
        with open(os.path.join(out, f"guidance_{target}.json")) as file:
            payload = json.load(file, parse_constant=lambda token: pytest.fail(f"non-standard JSON token {token}"))
        assert payload["settings"]["quick"] is True and payload["target"] == target
        with open(os.path.join(out, f"guidance_{target}.png"), "rb") as file:
            assert file.read(8) == b"\x89PNG\r\n\x1a\n"
        text = open(os.path.join(out, f"guidance_{target}.md")).read()
        for heading in ("## Scores against the guidance weight", "## Changes against w = 1 (paired)", "## What the numbers support"):
            assert heading in text
    with open(os.path.join(out, "guidance_toy_samples.png"), "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"


def test_quick_mode_has_every_configuration_and_honest_costs(quick):
    for target, results in quick["results"].items():
        s = bg.make_settings(target, quick=True)
        nfe = samplers.get(s.solver).nfe(s.num_steps)  # Heun: 2 N - 1
        assert nfe == 2 * s.num_steps - 1
        per_set = s.num_samples * (2 if target == "toy" else 1)
        methods = ["cfg", "auto"] + (["cfg-interval"] if target == "digits" else [])
        expected = {("trained", "none", 1.0), ("guide", "none", 1.0)}
        expected |= {("trained", m, w) for m in methods for w in s.weights if w != 1.0}
        if target == "toy":
            expected |= {("exact", "none", 1.0)} | {("exact", "cfg", w) for w in s.weights if w != 1.0}
        found = {(r["model"], r["method"], r["weight"]) for r in results["rows"] if r["model"] != "data"}
        assert found == expected
        for r in results["rows"]:
            if r["model"] == "data":
                continue
            assert r["nfe"] == nfe
            # a guided evaluation is one pass of 2B rows (classifier-free) or two of B (autoguidance); unguided one of B
            rows = {"none": nfe * per_set, "cfg": 2 * nfe * per_set, "auto": 2 * nfe * per_set}.get(r["method"])
            if rows is not None:
                assert r["rows"] == rows, r
            else:  # the interval guides some evaluations only
                assert nfe * per_set < r["rows"] < 2 * nfe * per_set
            passes = {"auto": 2 * nfe}.get(r["method"], nfe) * (2 if target == "toy" else 1)  # toy: one set per class
            assert r["forward_passes"] == passes
            for m in bg.metric_names(target):
                assert math.isfinite(r[m])


def test_digit_interval_is_edm2s_at_the_same_signal_to_noise_ratio(quick):
    lo, hi = quick["results"]["digits"]["interval"]
    sigma_data = float(load("digits").double().std(unbiased=False))  # the pooled pixel std training measures
    assert lo == pytest.approx(0.28 * sigma_data / 0.5, abs=1e-3) and hi == pytest.approx(5.4 * sigma_data / 0.5, abs=1e-3)


def test_report_only_rebuilds_the_markdown(quick, tmp_path, capsys):
    out = str(tmp_path)
    for name in ("guidance_toy.json",):
        with open(os.path.join(quick["out"], name)) as src, open(os.path.join(out, name), "w") as dst:
            dst.write(src.read())
    assert bg.main(["toy", "--report-only", "--out-dir", out, "--no-plot"]) == 0
    text = open(os.path.join(out, "guidance_toy.md")).read()
    assert "## What the numbers support" in text
    with pytest.raises(SystemExit) as done:
        bg.main(["digits", "--report-only", "--out-dir", out])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --report-only") and "guidance_digits.json" in err[0]


def test_toy_outside_fraction_of_true_draws_is_one_percent_and_of_the_other_class_large():
    settings = bg.make_settings("toy", quick=True)
    scorer = bg.ToyScorer(settings)
    points, labels = branches(12_000, seed=123)  # numpy draws of the same law, not the mixture's torch sampler
    for c in (0, 1):
        own = points[labels == c].double()
        score = scorer.score(own, c)
        # P(log p(X|c) < level) = 0.01 up to the level's own error from 2,000 draws (sd 0.0022) and this
        # set's binomial error (sd 0.0014 for about 6,000 points): 5 sd of the sum is 0.013
        assert abs(score["outside"] - 0.01) < 0.013, score
        other = scorer.score(points[labels == 1 - c].double(), c)
        assert other["outside"] > 0.5  # the other class's twigs lie outside this class's 99 % region
        assert other["sw2"] > 5 * score["sw2"]


def test_paired_difference_and_verdict_by_hand():
    diff = bg.paired_difference([3.0, 5.0, 7.0], [2.0, 3.0, 4.0])  # differences 1, 2, 3: mean 2, sd 1
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2} = 4.3027 (tables)
    assert diff["mean"] == pytest.approx(2.0) and diff["lo"] == pytest.approx(2 - half) and diff["hi"] == pytest.approx(2 + half)
    assert bg.verdict(diff) == "not resolved"  # 2 - 2.484 < 0
    tight = bg.paired_difference([1.1, 1.2, 1.3], [0.1, 0.1, 0.2])  # differences 1.0, 1.1, 1.1
    assert bg.verdict(tight) == "up"
    assert bg.verdict(bg.paired_difference([0.0, 0.0, 0.0], [1.0, 1.1, 1.0])) == "down"
    assert bg.paired_difference([1.0], [0.5])["lo"] is None  # one pair has no interval
    stat = bg.mean_std([1.0, 2.0, 4.0, float("nan")])
    assert stat == {"mean": pytest.approx(7 / 3), "std": pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)), "n": 3}


def test_changes_pair_rows_by_seed_against_the_unguided_rows():
    def row(method, weight, seed, sw2):
        return {"model": "trained", "method": method, "weight": weight, "train_seed": seed, "sample_seed": seed,
                "outside": 0.0, "sw2": sw2}

    rows = [row("none", 1.0, 0, 1.0), row("none", 1.0, 1, 5.0),
            row("cfg", 2.0, 1, 5.5), row("cfg", 2.0, 0, 1.5),  # +0.5 for both seeds, listed out of order
            row("auto", 2.0, 0, 0.5), row("auto", 2.0, 1, 4.7)]  # -0.5, -0.3
    summary = bg.aggregate("toy", rows)
    change = {(c["method"], c["against"]): c for c in summary["changes"]}
    assert change[("cfg", "w=1")]["sw2"]["mean"] == pytest.approx(0.5)
    assert change[("cfg", "w=1")]["sw2"]["lo"] == pytest.approx(0.5)  # no spread: the interval is a point
    assert change[("auto", "w=1")]["sw2"]["mean"] == pytest.approx(-0.4)
    assert change[("auto", "cfg")]["sw2"]["mean"] == pytest.approx(((0.5 - 1.5) + (4.7 - 5.5)) / 2)
    table = {(e["method"], e["weight"]): e for e in summary["table"]}
    assert table[("none", 1.0)]["sw2"]["mean"] == pytest.approx(3.0) and table[("none", 1.0)]["seeds"] == 2


def test_configurations_guide_every_weight_but_one_with_every_method():
    s = bg.make_settings("digits")
    configs = bg.configurations(s, has_guide=True, interval=True)
    assert configs[0] == ("none", 1.0) and len(configs) == 1 + 3 * (len(s.weights) - 1)
    assert set(configs[1:]) == {(m, w) for m in ("cfg", "cfg-interval", "auto") for w in s.weights if w != 1.0}


def test_bad_target_is_one_line():
    with pytest.raises(bg.ConfigError, match="unknown target 'cifar'"):
        bg.make_settings("cifar")
