"""What each remedy against mode collapse does to the GAN (edm_space.families.gan) at equal training CPU time.

    python benchmarks/gan_remedies.py                     # 8x8 digits, every variant, seeds 0-2
    python benchmarks/gan_remedies.py --report-only      # rebuild gan_remedies_DATA.md from its JSON, byte for byte
    python benchmarks/gan_remedies.py --data mnist --samples 1000   # score more samples; finished runs are scored again

A run that finished its budget writes budget.json (steps, CPU seconds) in its folder under --work-dir; a later
invocation with the same budget and options scores that run again instead of training it.

Every variant trains the families benchmark's GAN (benchmarks/families.py: its options, learning rate, batch and data
split) for the same CPU budget on one thread, then draws samples scored two ways: the classifier-feature Frechet
distance and class shares of edm_space.classifier (as the families benchmark scores), and the class shares of the
logistic-regression digit classifier of benchmarks/common.py. A run "covers" the digits when every class holds
between 5 and 20 % of its samples under both classifiers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (puts the repository root on sys.path)
import torch  # noqa: E402

import families  # noqa: E402  (the families benchmark whose GAN settings and data split the variants share)
from edm_space.classifier import image_quality  # noqa: E402
from edm_space.data import load  # noqa: E402
from edm_space.errors import ConfigError, unknown  # noqa: E402
from edm_space.files import read_json, write_atomic  # noqa: E402
from edm_space.model_training import ModelConfig, load_model, train_model  # noqa: E402
from edm_space.seeding import parse_seeds  # noqa: E402

VERSION = 1
COVERAGE = (0.05, 0.20)  # every class's share of the samples must lie in this range
#: every remedy off (and the non-saturating loss): the variants below change only what they name
NO_REMEDY = {"loss": "ns", "spectral_norm": False, "r1": 0.0, "lr_ratio": 1.0, "minibatch_std": 0}
#: name -> (the remedies a variant turns on, what the variant is)
CHANGES: Dict[str, Any] = {
    "ns-plain": ({}, "non-saturating loss, no remedy"),
    "hinge": ({"loss": "hinge"}, "hinge loss alone"),
    "spectral-norm": ({"spectral_norm": True}, "spectral normalization alone"),
    "r1": ({"r1": 1.0}, "R1 penalty gamma = 1 alone"),
    "ttur": ({"lr_ratio": 4.0}, "discriminator learning rate 4x the generator's alone"),
    "mbstd": ({"minibatch_std": 4}, "minibatch standard deviation (groups of 4) alone"),
    "sn-hinge": ({"loss": "hinge", "spectral_norm": True}, "spectral normalization and hinge loss (SNGAN)"),
    "sn-hinge-ttur": ({"loss": "hinge", "spectral_norm": True, "lr_ratio": 4.0}, "SNGAN with the discriminator at 4x the learning rate"),
    "all": ({"loss": "hinge", "spectral_norm": True, "r1": 1.0, "lr_ratio": 4.0, "minibatch_std": 4}, "every remedy"),
    "ttur8": ({"lr_ratio": 8.0}, "discriminator learning rate 8x the generator's alone"),
    "ttur-mbstd": ({"lr_ratio": 4.0, "minibatch_std": 4}, "two learning rates (4x) and the minibatch standard deviation"),
    "ttur8-r1": ({"lr_ratio": 8.0, "r1": 1.0}, "discriminator learning rate 8x the generator's and the R1 penalty gamma = 1"),
}
#: name -> (options added to the benchmark's GAN options, what the variant is)
VARIANTS: Dict[str, Any] = {name: ({**NO_REMEDY, **change}, what) for name, (change, what) in CHANGES.items()}


def trained_on_budget(run_dir: str, options: Dict[str, Any], budget_s: float) -> Optional[Dict[str, Any]]:
    """The run's budget.json ({"budget_s", "steps", "cpu_s"}) when it finished `budget_s` with `options`, else None."""
    path = os.path.join(run_dir, "budget.json")
    if not os.path.isfile(path):
        return None
    done = read_json(path, "budget record")
    same = done.get("budget_s") == budget_s and read_json(os.path.join(run_dir, "config.json"), "run config").get("options") == options
    return done if same else None


def run_variant(name: str, options: Dict[str, Any], settings: families.Settings, seed: int, work_dir: str,
                scorers: Dict[str, Any], budget_s: float) -> Dict[str, Any]:
    """Train one (variant, seed) on the CPU budget (or reuse the run that did) and score its samples."""
    run_dir = os.path.join(work_dir, f"{name}-seed{seed}")
    full = {**families.FAMILY_OPTIONS[settings.data]["gan"], **options}

    def train_to(steps: int) -> None:
        train_model(ModelConfig(kind="family", name="gan", options=full, data=settings.data, out=run_dir, held_out=settings.held_out,
                                steps=steps, batch=settings.batch, lr=families.FAMILY_LR["gan"], seed=seed, checkpoint_every=steps,
                                keep_checkpoints=1, log_every=steps),
                    progress=False, device="cpu", echo=lambda _: None)

    common.refuse_legacy_run(run_dir)
    done = trained_on_budget(run_dir, full, budget_s)
    if done is None:
        steps, cpu = families.train_on_budget(train_to, budget_s)
        done = {"budget_s": budget_s, "steps": steps, "cpu_s": cpu}
        write_atomic(os.path.join(run_dir, "budget.json"), json.dumps(done).encode())
    model, _, _ = load_model(run_dir)
    model.eval()
    samples = model.sample(settings.num_samples, torch.Generator().manual_seed(10_000 + seed))
    quality = image_quality(samples, None, scorers["classifier"], real_features=scorers["real_features"])
    logistic = common.classify_samples(scorers["logistic"], samples)
    return {"variant": name, "seed": seed, "options": full, "steps": done["steps"], "cpu_s": done["cpu_s"], "fd": quality["frechet_distance"],
            "min_class": quality["min_class_fraction"], "max_class": quality["max_class_fraction"],
            "logistic_min_class": logistic["min_class_fraction"], "logistic_max_class": max(logistic["class_fractions"].values())}


def covers(row: Dict[str, Any]) -> bool:
    """Every class between COVERAGE[0] and COVERAGE[1] of the samples, under both classifiers."""
    low, high = COVERAGE
    return all(low <= row[k] for k in ("min_class", "logistic_min_class")) and all(row[k] <= high for k in ("max_class", "logistic_max_class"))


def variants_option(results: Dict[str, Any]) -> str:
    """` --variants A,B` when the run measured only some of VARIANTS (in their order), else nothing."""
    measured = [name for name in VARIANTS if any(r["variant"] == name for r in results["runs"])]
    return "" if len(measured) == len(VARIANTS) else " --variants " + ",".join(measured)


def samples_option(settings: Dict[str, Any]) -> str:
    """` --samples N` when the run scored another number of samples than the families benchmark's, else nothing."""
    default = families.make_settings(False, ["gan"], [0], None, settings["data"]).num_samples
    return "" if settings["num_samples"] == default else f" --samples {settings['num_samples']}"


def markdown(results: Dict[str, Any]) -> str:
    """The report, from the results JSON alone."""
    s = results["settings"]
    seeds = sorted({r["seed"] for r in results["runs"]})
    lines = [f"# GAN remedies on {s['data']}: equal training CPU time, {len(seeds)} seeds", "",
             f"Command: `python benchmarks/gan_remedies.py --data {s['data']} --budget {results['budget_s']:g} --seeds "
             f"{','.join(str(v) for v in seeds)}{variants_option(results)}{samples_option(s)}` (`--report-only` rebuilds this page "
             f"from the JSON).", "",
             f"Each run trains benchmarks/families.py's GAN ({json.dumps(families_options(results))}, Adam lr "
             f"{results['lr']:g}, batch {s['batch']}) for {results['budget_s']:g} CPU seconds on one thread; "
             f"{s['num_samples']} samples are scored by edm_space.classifier (FD against all real digits, class shares) and by "
             f"benchmarks/common.py's logistic-regression classifier (class shares). 'covered' counts the seeds whose every class "
             f"holds {COVERAGE[0]:.0%} to {COVERAGE[1]:.0%} of the samples under both. A run that finished this budget in an "
             f"earlier invocation with the same work folder and options is scored again, not retrained (its budget.json).", ""]
    rows = []
    for name in results["variants"]:
        runs = [r for r in results["runs"] if r["variant"] == name]
        if not runs:
            continue
        fds = [r["fd"] for r in runs]
        mean = sum(fds) / len(fds)
        rows.append([f"`{name}`", results["what"][name], f"{sum(r['steps'] for r in runs) / len(runs):.0f}", f"{mean:.1f}",
                     f"{max(fds):.1f}", f"{min(r['min_class'] for r in runs):.3f}", f"{max(r['max_class'] for r in runs):.3f}",
                     f"{min(r['logistic_min_class'] for r in runs):.3f}", f"{max(r['logistic_max_class'] for r in runs):.3f}",
                     f"{sum(covers(r) for r in runs)} / {len(runs)}"])
    lines += [common.markdown_table(["variant", "change", "steps (mean)", "FD (mean)", "FD (worst seed)", "smallest class (worst)",
                                     "largest class (worst)", "logistic: smallest (worst)", "logistic: largest (worst)", "covered"], rows), ""]
    lines += ["## Per seed", "", common.markdown_table(
        ["variant", "seed", "steps", "CPU s", "FD", "smallest class", "largest class", "logistic smallest", "logistic largest"],
        [[f"`{r['variant']}`", r["seed"], r["steps"], f"{r['cpu_s']:.0f}", f"{r['fd']:.2f}", f"{r['min_class']:.3f}",
          f"{r['max_class']:.3f}", f"{r['logistic_min_class']:.3f}", f"{r['logistic_max_class']:.3f}"] for r in results["runs"]]), ""]
    lines += ["## Machine", "", common.machine_markdown(results["machine"]), ""]
    return "\n".join(lines)


def families_options(results: Dict[str, Any]) -> Dict[str, Any]:
    return results["base_options"]


def stem(data: str) -> str:
    return f"gan_remedies_{data}"


def run(data: str, names: Sequence[str], seeds: Sequence[int], budget: float, out_dir: str, work_dir: str,
        log: Callable[[str], None] = print, samples: Optional[int] = None) -> List[str]:
    """Train and score every (variant, seed) (`samples` each; default the families benchmark's count); write the report."""
    common.set_threads(1)
    settings = families.make_settings(False, ["gan"], seeds, budget, data)
    if samples is not None:
        settings = dataclasses.replace(settings, num_samples=samples)
    os.makedirs(work_dir, exist_ok=True)
    digits = families.prepare_data(settings, work_dir)
    images, labels = load(data, with_labels=True)
    scorers = {"classifier": digits.classifier, "real_features": digits.real_features,
               "logistic": common.fit_digit_classifier(images, labels)["model"]}
    runs = []
    for seed in seeds:
        for name in names:
            t0 = time.perf_counter()
            runs.append(run_variant(name, VARIANTS[name][0], settings, seed, work_dir, scorers, budget))
            r = runs[-1]
            log(f"{name} seed {seed}: {r['steps']} steps, FD {r['fd']:.2f}, classes {r['min_class']:.3f}..{r['max_class']:.3f} "
                f"(logistic {r['logistic_min_class']:.3f}..{r['logistic_max_class']:.3f}), {time.perf_counter() - t0:.0f} s wall")
    results = {"settings": dataclasses.asdict(settings), "version": VERSION, "budget_s": budget, "lr": families.FAMILY_LR["gan"],
               "base_options": families.FAMILY_OPTIONS[data]["gan"], "variants": list(names),
               "what": {n: VARIANTS[n][1] for n in names}, "runs": runs, "machine": common.machine_info()}
    return common.write_results(stem(data), results, markdown(results), out_dir)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/gan_remedies.py", description=__doc__.split("\n")[0])
    common.add_ablation_arguments(parser, families.DATA_CHOICES, f"comma-separated, of {', '.join(VARIANTS)} [default: all]", "0-2",
                                  30.0, "gan_remedies")
    parser.add_argument("--samples", type=int, default=None, help="samples scored per run [default: the families benchmark's, "
                        "1000 on the digits, 250 on mnist]")
    args = parser.parse_args(argv)
    with common.one_line_errors():
        if args.samples is not None and not 10 <= args.samples <= 100_000:
            raise ConfigError(f"--samples {args.samples} is invalid; it must be an integer in [10, 100000]")
        if args.report_only:
            paths = common.rebuild_report(os.path.join(args.out_dir, f"{stem(args.data)}.json"),
                                          lambda results: common.write_results(stem(args.data), results, markdown(results), args.out_dir))
        else:
            if not (math.isfinite(args.budget) and args.budget > 0):
                raise ConfigError(f"--budget {args.budget} is invalid; it must be a number of CPU seconds > 0")
            names = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else list(VARIANTS)
            for name in names:
                if name not in VARIANTS:
                    raise unknown("variant", name, list(VARIANTS))
            paths = run(args.data, names, parse_seeds(args.seeds), args.budget, args.out_dir, args.work_dir, samples=args.samples)
        for written in paths:
            print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
