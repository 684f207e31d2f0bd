"""Helpers shared by the benchmark scripts (solvers.py, formulations.py, speed.py, training_quality.py).

Nothing here is part of the library: the machine description, results written as
JSON and Markdown, Markdown tables, figures saved as PNG, one-line errors on the
command line, the logistic-regression "is it a digit" test, peak memory, and
sampling a trained run.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import scipy
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")

if ROOT not in sys.path:  # `python benchmarks/x.py` from a checkout without an editable install
    sys.path.insert(0, ROOT)

from edm_space.errors import ConfigError  # noqa: E402
from edm_space.files import write_atomic  # noqa: E402
from edm_space.optional import require  # noqa: E402
from edm_space.generation import SamplerSettings, generate  # noqa: E402
from edm_space import networks  # noqa: E402
from edm_space.model_training import model_registry  # noqa: E402
from edm_space.training import load_trained  # noqa: E402


# ---------------------------------------------------------------------------
# Machine and environment.


#: The data set behind a benchmark's data choice: its "mnist" is the 5,000 digits its committed results used.
BENCHMARK_DATA = {"mnist": "mnist5k"}


def data_set(choice: str) -> str:
    """The edm_space.data name of a benchmark's --data choice."""
    return BENCHMARK_DATA.get(choice, choice)


def set_threads(threads: Optional[int]) -> int:
    """torch.set_num_threads(threads) when given; returns the number torch now uses."""
    if threads is not None:
        if threads < 1:
            raise SystemExit(f"--threads {threads} is invalid; it must be >= 1")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def machine_info() -> Dict[str, Any]:
    """What the numbers were measured on (call it after setting the torch threads)."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = None
    cpu_model = None
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = [round(v, 2) for v in os.getloadavg()]  # 1, 5 and 15 minutes
    except OSError:
        load = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_average_at_start": load,
        "git_commit": commit,
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (getrusage ru_maxrss), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


# ---------------------------------------------------------------------------
# "Recognisable digits": a logistic-regression classifier fitted on the real images.


def fit_digit_classifier(x: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> Dict[str, Any]:
    """Logistic regression (scikit-learn, default C = 1, lbfgs) on flattened images in training units ([-1, 1]).

    Returns {"model", "holdout_accuracy", "holdout_mean_top_prob", "controls"}:
    the holdout numbers come from a second fit on 80 % of the data scored on the
    other 20 %, so the reader can see what real, unseen digits score (the ceiling
    of the test). "controls" are the mean top-class probabilities the returned
    model gives to non-digits: clipped N(0, 1) pixels, and the pixel average of
    two different random real digits. The returned model is fitted on all of the data.

    C = 1 (scikit-learn's default) is also, on the 8x8 digits, the C with the best
    5-fold cross-validated log-loss among 0.001 .. 10, i.e. its probabilities are
    the calibrated ones rather than a choice that flatters the samples.
    """
    LogisticRegression = require("sklearn.linear_model", "the digit classifier").LogisticRegression

    flat = x.reshape(len(x), -1).numpy().astype(np.float64)
    y = labels.numpy()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(flat))
    cut = int(0.8 * len(flat))
    train_idx, test_idx = order[:cut], order[cut:]
    probe = LogisticRegression(max_iter=5000).fit(flat[train_idx], y[train_idx])
    test_prob = probe.predict_proba(flat[test_idx])
    model = LogisticRegression(max_iter=5000).fit(flat, y)
    noise = np.clip(rng.standard_normal((1000, flat.shape[1])), -1.0, 1.0)
    first, second = rng.integers(0, len(flat), 2000).reshape(2, -1)
    keep = y[first] != y[second]
    blend = 0.5 * (flat[first[keep]] + flat[second[keep]])
    return {
        "model": model,
        "holdout_accuracy": float((probe.classes_[test_prob.argmax(1)] == y[test_idx]).mean()),
        "holdout_mean_top_prob": float(test_prob.max(1).mean()),
        "controls": {
            "clipped_gaussian_noise": float(model.predict_proba(noise).max(1).mean()),
            "blend_of_two_different_digits": float(model.predict_proba(blend).max(1).mean()),
        },
    }


def classify_samples(model, samples: "np.ndarray | torch.Tensor") -> Dict[str, Any]:
    """Mean top-class probability and the fraction of samples given to each class."""
    s = np.asarray(samples.detach().cpu() if isinstance(samples, torch.Tensor) else samples, dtype=np.float64)
    s = np.clip(s.reshape(len(s), -1), -1.0, 1.0)
    prob = model.predict_proba(s)
    top = prob.max(1)
    classes = model.classes_[prob.argmax(1)]
    fractions = {int(c): float((classes == c).mean()) for c in model.classes_}
    return {
        "mean_top_prob": float(top.mean()),
        "median_top_prob": float(np.median(top)),
        "fraction_top_prob_above_0.5": float((top > 0.5).mean()),
        "class_fractions": fractions,
        "min_class_fraction": float(min(fractions.values())),
    }


# ---------------------------------------------------------------------------
# Sampling a trained run.


def sample_run(run_dir: str, n: int, solver: str = "heun", num_steps: int = 18, batch: int = 500, first_seed: int = 0, ema: bool = True):
    """n samples (seeds first_seed .. first_seed + n - 1) of a run's newest checkpoint, as `edm-space sample --ckpt` draws them.

    Returns (samples float64 tensor, nfe, step of the checkpoint).
    """
    denoiser, config, item_shape, _, step = load_trained(run_dir, ema=ema)
    seeds = list(range(first_seed, first_seed + n))
    settings = SamplerSettings(formulation=denoiser.formulation, solver=solver, num_steps=num_steps)
    out = generate(denoiser, seeds, item_shape, settings, batch_size=batch)
    return out.samples, out.nfe, step


# ---------------------------------------------------------------------------
# Output.


def legacy_defaults(run_dir: str) -> Dict[str, Any]:
    """The options a run in `run_dir` was trained with under an old default: those its config.json lacks among its
    model's RECORDED_DEFAULTS (Registry.recorded_defaults), with the old values it loads and resumes with.
    {} when there is no run, or it records them all."""
    path = os.path.join(run_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return {}  # no run, or one the trainer will report as damaged
    if not isinstance(config, dict):
        return {}
    if "net" in config:  # a diffusion run (TrainConfig): its network's options
        registry, name, options = networks.NETWORKS, config["net"], config.get("net_options") or {}
    elif config.get("kind") in ("family", "autoencoder"):  # a model run (ModelConfig)
        registry, name, options = model_registry(config["kind"]), config.get("name"), config.get("options") or {}
    else:
        return {}
    return {key: value for key, value in registry.recorded_defaults(name, new_run=False).items() if key not in options}


def refuse_legacy_run(run_dir: str) -> None:
    """A ConfigError when the run in `run_dir` has legacy_defaults: it would resume (and load) with the old
    defaults, so a benchmark reusing it would measure the old model under the new name."""
    legacy = legacy_defaults(run_dir)
    if legacy:
        values = ", ".join(f"{key}={value!r}" for key, value in sorted(legacy.items()))
        raise ConfigError(f"{run_dir!r} holds a run trained before the defaults of {', '.join(sorted(legacy))} changed (it loads with "
                          f"{values}); delete it or choose another --work-dir")


def jsonable(value: Any) -> Any:
    """`value` as standard JSON data: NaN and infinities become None (JSON has no token for them),
    NumPy scalars Python numbers, arrays and tensors nested lists, tuples lists; other objects their str."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return jsonable(np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value).tolist())
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def write_json(path: str, payload: Any, indent: int = 2) -> str:
    """`payload` as standard JSON (see `jsonable`), written atomically."""
    write_atomic(path, (json.dumps(jsonable(payload), indent=indent, allow_nan=False) + "\n").encode())
    return path


def write_markdown(path: str, text: str) -> str:
    """Markdown text ending in exactly one newline, written atomically."""
    write_atomic(path, text.rstrip("\n").encode() + b"\n")
    return path


def write_results(stem: str, payload: Dict[str, Any], markdown: str, folder: Optional[str] = None, indent: int = 2) -> List[str]:
    """Write FOLDER/stem.json and FOLDER/stem.md atomically (FOLDER: benchmarks/results); returns the paths."""
    folder = RESULTS if folder is None else folder
    os.makedirs(folder, exist_ok=True)
    json_path = write_json(os.path.join(folder, stem + ".json"), payload, indent)
    md_path = write_markdown(os.path.join(folder, stem + ".md"), markdown)
    return [json_path, md_path]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table: a header row, the separator, one line per row (cells as str)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_markdown(info: Dict[str, Any]) -> str:
    """The machine description as a Markdown list."""
    keys = ("platform", "cpu_model", "cpu_count", "cpus_usable", "python", "torch", "torch_threads", "load_average_at_start", "git_commit")
    return "\n".join(f"- {k}: {info.get(k)}" for k in keys)


# ---------------------------------------------------------------------------
# Figures.


def pyplot(needed_for: str):
    """matplotlib.pyplot on the file-only Agg backend, or a one-line ConfigError naming the extra."""
    require("matplotlib", needed_for).use("Agg")
    return require("matplotlib.pyplot", needed_for)


def have_matplotlib() -> bool:
    """Whether the optional plotting package is installed."""
    try:
        require("matplotlib", "the figures")
    except ConfigError:
        return False
    return True


def save_png(fig, path: str, dpi: Optional[float] = None) -> str:
    """Save a matplotlib figure as PNG atomically and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **({} if dpi is None else {"dpi": dpi}))
    pyplot("the figures").close(fig)
    write_atomic(path, buffer.getvalue())
    return path


# ---------------------------------------------------------------------------
# Command line.


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Bad user input (ConfigError) ends the script with one line `error: ...` on stderr and exit status 2.

    Set EDM_SPACE_DEBUG=1 to see the traceback instead.
    """
    try:
        yield
    except ConfigError as error:
        if os.environ.get("EDM_SPACE_DEBUG"):
            raise
        print("error: " + " ".join(str(error).split()), file=sys.stderr)
        raise SystemExit(2) from None


def add_ablation_arguments(parser, data_choices: Sequence[str], variants_help: str, seeds: str, budget: float, name: str) -> None:
    """The options every equal-CPU-budget ablation takes (--data, --variants, --seeds, --budget, --out-dir, --work-dir,
    --report-only); `name` is the script's, as in its results NAME_DATA.json and its work folder edm-space-NAME."""
    parser.add_argument("--data", default="digits", choices=list(data_choices))
    parser.add_argument("--variants", default=None, help=variants_help)
    parser.add_argument("--seeds", default=seeds, help=f"seeds, e.g. 0-2 [default: {seeds}]")
    parser.add_argument("--budget", type=float, default=budget, help=f"training CPU seconds per run [default: {budget:g}]")
    parser.add_argument("--out-dir", default=RESULTS)
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "edm-space-" + name.replace("_", "-")))
    parser.add_argument("--report-only", action="store_true", help=f"rewrite the Markdown from {name}_DATA.json; train nothing")


def report_main(stem: str, report_only: bool, measure: Callable[[], Dict[str, Any]],
                write: Callable[[Dict[str, Any]], List[str]]) -> int:
    """The body of a report benchmark's main(): --report-only rewrites the report from benchmarks/results/STEM.json,
    else `measure()` runs on one torch thread and its results are written; the paths are printed; bad input ends
    in one line (one_line_errors). Returns the exit status."""
    with one_line_errors():
        if report_only:
            paths = rebuild_report(os.path.join(RESULTS, stem + ".json"), write)
        else:
            torch.set_num_threads(1)
            paths = write(measure())
        print("\n".join(paths))
    return 0


def rebuild_report(json_path: str, write: Callable[[Dict[str, Any]], List[str]]) -> List[str]:
    """--report-only: `write` the report again from the results JSON at `json_path` (trains nothing); its paths."""
    if not os.path.isfile(json_path):
        raise ConfigError(f"--report-only: {json_path!r} does not exist; run the benchmark first")
    with open(json_path) as file:
        return write(json.load(file))
