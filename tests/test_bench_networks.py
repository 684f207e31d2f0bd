"""The network benchmark (benchmarks/networks.py): U-Net against DiT at equal training compute.

The --quick path runs end to end once (shared by the tests below) and its JSON must hold
what the Markdown reads; the equal-budget step arithmetic, the log-log interpolation, the
crossing finder and the paired summary are checked against hand-computed numbers; the DiT's
recorded parameter count against a closed-form count of its layers.
"""

import json
import math
import os

import pytest

from conftest import benchmark_folders, import_benchmark
from edm_space.data import load
from edm_space.errors import ConfigError

bn = import_benchmark("networks")  # benchmarks/networks.py


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One `--quick` run through the command line, shared by the tests below."""
    out, work = benchmark_folders(tmp_path_factory, "networks")
    assert bn.main(["--quick", "--out-dir", out, "--work-dir", work]) == 0
    with open(os.path.join(out, "networks_digits.json")) as file:
        payload = json.load(file)  # standard JSON: no NaN tokens
    with open(os.path.join(out, "networks_digits.md")) as file:
        markdown = file.read()
    return {"out": out, "payload": payload, "markdown": markdown}


def dit_parameters(depth: int, width: int, heads: int, patch: int, channels: int = 1, mlp_ratio: int = 4, freqs: int = 32,
                   pos: str = "sincos") -> int:
    """Weights + biases of edm_space/networks/dit.py's DiT, counted layer by layer from its description (neither
    position encoding, sin-cos or RoPE, has weights)."""
    w, head_dim, token = width, width // heads, channels * patch * patch
    noise_embedding = (2 * freqs * w + w) + (w * w + w)  # sin/cos features -> w -> w
    patch_embedding = token * w + w
    block = ((w * 3 * w + 3 * w)  # qkv
             + 2 * head_dim  # RMS norms of q and k (a gain each)
             + (w * w + w)  # output projection
             + (w * mlp_ratio * w + mlp_ratio * w) + (mlp_ratio * w * w + w)  # MLP
             + (w * 6 * w + 6 * w))  # adaLN-Zero modulation: shift, scale, gate for two branches
    final = (w * 2 * w + 2 * w) + (w * token + token)  # output modulation and linear layer
    return noise_embedding + patch_embedding + depth * block + final


# --------------------------------------------------------------------------- the quick run


def test_quick_json_holds_what_the_markdown_needs(quick):
    payload, markdown = quick["payload"], quick["markdown"]
    settings = payload["settings"]
    assert settings["quick"] is True and payload["data"] == "digits"
    assert set(payload["networks"]) == {"unet", "dit"}
    for net, info in payload["networks"].items():
        assert info["parameters"] > 0 and info["cpu_s_per_step"] > 0 and info["options"] == settings["nets"][net]
    # one run per (network, preset, seed), one scored row per stage
    assert len(payload["runs"]) == 2 * len(settings["presets"]) * len(settings["seeds"])
    for run in payload["runs"]:
        assert [row["steps"] for row in run["rows"]] == payload["networks"][run["net"]]["stages"]
        for row in run["rows"]:
            assert row["images"] == row["steps"] * settings["batch"]
            assert row["nfe"] == 2 * settings["sampler"][2] - 1  # Heun: two evaluations per step, one on the last
            assert row["nonfinite"] == 0
            assert math.isfinite(row["fd"]) and row["fd"] >= 0
            assert 0.1 <= row["confidence"] <= 1.0  # the mean top probability of 10 classes is at least 1/10
            assert 0 <= row["min_class_fraction"] <= 0.1 <= row["max_class_fraction"] <= 1
        cpu = [row["train_cpu_s"] for row in run["rows"]]
        assert cpu == sorted(cpu) and cpu[0] > 0  # cumulative over the stages
    assert payload["heldout_count"] == settings["holdout"]
    assert len(payload["data_rows"]) == len(settings["seeds"])
    summary = payload["summary"]
    for preset in settings["presets"]:
        for net in ("unet", "dit"):
            assert len(summary["curves"][preset][net]) == len(settings["stage_divisors"])
        assert [c["stage"] for c in summary["paired"][preset]] == list(range(len(settings["stage_divisors"])))
    for heading in ("## What the numbers support", "## Networks", "## Quality against training images",
                    "## Paired differences (U-Net - DiT, same seed)", "## Settings", "## Machine"):
        assert heading in markdown
    for net in ("unet", "dit"):
        assert f"{payload['networks'][net]['parameters']:,}" in markdown
    assert "![" in markdown and "networks_digits.png" in markdown
    with open(os.path.join(quick["out"], "networks_digits.png"), "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"


def test_quick_stages_fill_the_equal_budget(quick):
    """From the recorded step costs alone: the last stage fits the budget and one more unit of steps would not."""
    payload = quick["payload"]
    settings = payload["settings"]
    divisors = settings["stage_divisors"]
    unit = math.lcm(*divisors)
    for info in payload["networks"].values():
        total, cost = info["stages"][-1], info["cpu_s_per_step"]
        assert total % unit == 0
        assert total * cost <= settings["budget_cpu_s"] * (1 + 1e-9) < (total + unit) * cost
        assert info["stages"] == [total // d for d in divisors]


def test_quick_dit_parameter_count_matches_its_layers(quick):
    options = quick["payload"]["settings"]["nets"]["dit"]
    assert quick["payload"]["networks"]["dit"]["parameters"] == dit_parameters(**options) == 24_484


def test_report_only_rebuilds_the_same_markdown(quick, tmp_path):
    out = str(tmp_path)
    with open(os.path.join(out, "networks_digits.json"), "w") as file:
        json.dump(quick["payload"], file)
    assert bn.main(["--report-only", "--out-dir", out]) == 0
    with open(os.path.join(out, "networks_digits.md")) as file:
        assert file.read() == quick["markdown"]
    with open(os.path.join(out, "networks_digits.png"), "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- arithmetic against hand-computed numbers


@pytest.mark.parametrize("budget, cost, divisors, expected", [
    (90.0, 0.4, (8, 4, 2, 1), [28, 56, 112, 224]),  # 225 steps fit; the largest multiple of 8 is 224
    (90.0, 0.27, (8, 4, 2, 1), [41, 82, 164, 328]),  # 333.3 steps fit -> 333 -> 328
    (100.0, 1.0, (6, 4, 1), [16, 24, 96]),  # lcm(6, 4) = 12: 100 -> 96
    (0.9, 0.3, (3, 1), [1, 3]),  # exactly 3 steps fit although 0.9 / 0.3 is 2.9999999999999996 in floating point
])
def test_budget_steps_hand_computed(budget, cost, divisors, expected):
    assert bn.budget_steps(budget, cost, divisors) == expected


def test_budget_steps_refuses_what_cannot_be_staged():
    with pytest.raises(ConfigError, match="at least 8"):
        bn.budget_steps(2.0, 0.4, (8, 4, 2, 1))  # 5 steps fit, the stages need 8
    with pytest.raises(ConfigError, match="divisors"):
        bn.budget_steps(90.0, 0.4, (4, 2))
    with pytest.raises(ConfigError, match="step cost"):
        bn.budget_steps(90.0, 0.0, (2, 1))


def test_dit_parameter_counts_of_the_committed_configurations():
    """The benchmark's DiTs (digits, MNIST) and the README's depth 6, width 192 DiT on MNIST, from the closed form."""
    digits, mnist = bn.make_settings("digits"), bn.make_settings("mnist")
    assert bn.parameter_count(digits, "dit", (1, 8, 8)) == dit_parameters(**digits.nets["dit"]) == 1_246_596
    assert bn.parameter_count(mnist, "dit", (1, 28, 28)) == dit_parameters(**mnist.nets["dit"])
    wide = bn.make_settings("mnist")
    wide.nets["dit"] = {"depth": 6, "width": 192}
    assert bn.parameter_count(wide, "dit", (1, 28, 28)) == dit_parameters(6, 192, 4, 2) == 4_124_548


def test_interpolate_loglog_is_exact_on_a_power_law():
    xs = [100.0, 400.0, 1600.0]
    ys = [5.0 * x**-0.5 for x in xs]
    assert bn.interpolate_loglog(xs, ys, 200.0) == pytest.approx(5.0 / math.sqrt(200.0), rel=1e-12)
    assert bn.interpolate_loglog(xs, ys, 1000.0) == pytest.approx(5.0 / math.sqrt(1000.0), rel=1e-12)
    assert bn.interpolate_loglog(xs, ys, 50.0) is None and bn.interpolate_loglog(xs, ys, 2000.0) is None
    assert bn.interpolate_loglog(xs, [ys[0], None, ys[2]], 200.0) is None


def test_crossings_are_sign_changes_between_neighbours():
    assert bn.crossings([1.0, -1.0, -2.0, 3.0, None, 1.0, 0.0, -1.0]) == [0, 2]
    assert bn.crossings([2.0, 1.0, 0.5]) == []


def test_summary_pairs_seeds_with_a_t_interval():
    """FD U-Net 10, 12, 14 and DiT 8, 9, 10 on seeds 0-2: differences 2, 3, 4, mean 3, sd 1,
    95 % half-width t(0.975, 2) / sqrt(3) = 4.302653 / 1.732051 = 2.484138: DiT better."""
    def run(net, seed, fd):
        row = {"steps": 10, "images": 640, "fd": fd, "confidence": 0.9, "min_class_fraction": 0.05, "max_class_fraction": 0.2,
               "train_cpu_s": 1.0, "train_wall_s": 1.0, "sample_s": 1.0, "loss": 0.5}
        return {"net": net, "preset": "edm", "seed": seed, "rows": [row]}

    runs = [run("unet", s, fd) for s, fd in enumerate((10.0, 12.0, 14.0))] + [run("dit", s, fd) for s, fd in enumerate((8.0, 9.0, 10.0))]
    summary = bn.summarize({"presets": ["edm"]}, runs, [])
    unet, dit = summary["curves"]["edm"]["unet"][0]["fd"], summary["curves"]["edm"]["dit"][0]["fd"]
    assert (unet["mean"], unet["std"], dit["mean"], dit["std"]) == pytest.approx((12.0, 2.0, 9.0, 1.0))
    paired = summary["paired"]["edm"][0]["fd"]
    assert paired["diff"] == pytest.approx(3.0)
    assert paired["half_width"] == pytest.approx(2.484138, rel=1e-6)
    assert paired["verdict"] == "b lower"  # b is the DiT
    assert bn._verdict("fd", paired) == "DiT better"


def test_heldout_split_partitions_the_set():
    n = len(load("digits"))
    train_x, heldout = bn.split("digits", n - 500, seed=3)
    assert len(train_x) == n - 500 and len(heldout) == 500
    train_rows = {row.numpy().tobytes() for row in train_x}
    assert not any(row.numpy().tobytes() in train_rows for row in heldout)


def test_command_line_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bn.main(["--report-only", "--out-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --report-only") and "\n" not in err
    with pytest.raises(SystemExit) as exit_info:
        bn.main(["--budget", "0", "--out-dir", str(tmp_path), "--work-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--budget 0.0 is invalid" in capsys.readouterr().err
