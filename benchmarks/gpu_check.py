"""GPU check: training, throughput, sampling and torchrun sampling on one CUDA GPU, in one command.

    python benchmarks/gpu_check.py                       # a few minutes on one GPU (budget: 8); writes benchmarks/results/gpu_check.{json,md}
    python benchmarks/gpu_check.py --quick               # tiny sizes on the GPU; writes to a temporary folder unless --results-dir
    python benchmarks/gpu_check.py --allow-cpu --quick   # without a GPU: every part on the CPU at tiny sizes (a smoke test of this script)

Without CUDA and without --allow-cpu it prints one line, writes nothing and exits 0. On the CPU
the sizes are always the tiny ones. The network is the digits U-Net of training_quality.py
(channels 32, channel_mult [1, 2], batch 64, its learning rate, warm-up and EMA; 2,000 steps).

1. Loss agreement. The same run (seed 0, log_every = 1) trains on the CPU in fp32 for 5 steps and
   on the GPU in fp32 and in bf16 for the full number of steps. train() draws every random number on
   the CPU, so the runs see the same batches, sigmas and noise, and start from the same weights; the
   max relative difference of the first 5 logged losses against the CPU's is checked against
   TOLERANCE: 0 when the run is on the CPU in fp32 as well (the loop is deterministic: the same
   device and precision give the same losses, bit for bit), 5e-3 for fp32 on a GPU (cuDNN runs
   fp32 convolutions in TF32, a 10-bit mantissa, unless torch.backends.cudnn.allow_tf32 is off),
   5e-2 for bf16 (an 8-bit mantissa in the forward pass). The U-Net's output layer starts at zero,
   so these first losses test the draws and the start far more than the arithmetic; hence also
   network agreement: the fp32 run's trained EMA weights, loaded once on the CPU and once on the GPU,
   denoise the same noisy digits (noise levels drawn as in training); the relative difference
   ||r_device - r_cpu|| / ||r_cpu|| of the network's part r = D(x_hat) - c_skip x_hat = c_out F
   (EDM eq. 7) is checked against TOLERANCE_NETWORK (0 on the CPU in fp32; 1e-2 for TF32; 5e-2 for bf16).
2. Training throughput of those runs: images/s from log.jsonl (median over the logged steps after
   the first tenth, which hold CUDA's start-up), the call's end-to-end images/s, peak GPU memory.
3. Ours against hand-written PyTorch: speed.py's bench_training (train() against its minimal and
   matched loops, steady state, wall time between synchronizations) per precision on the GPU.
4. Sampling: 10,000 digits (seeds 0..9,999, drawn as `edm-space sample` draws them) from the fp32
   run's EMA weights with dpm++3m at 10 NFE, in one batch: samples/s of the sampler call (latents
   drawn beforehand, the device synchronized), for the network in fp32 and in bf16 with a float64
   state, and in fp32 with a float32 state; peak GPU memory; and the digit test of
   training_quality.py (a logistic regression on the real digits: mean top-class probability).
5. Many processes: `edm-space sample` once as one process and once under
   `torchrun --standalone --nproc_per_node=<number of GPUs>` (one process per GPU; two CPU
   processes with --allow-cpu) with the same seeds and checkpoint. Each process integrates a
   batch of ceil(n / processes) seeds, as does the single process, so the two .npz files must be
   equal element for element.

The exit status is 1 when a check fails (loss or network agreement, non-finite samples, the two
sample files differ); the throughput numbers are measurements, not checks. Tiny sizes (--quick, and
always on the CPU): channels 8, batch 16, 6 steps, 32 samples, one round of speed.py's loops.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402
import samplers  # noqa: E402
import speed  # noqa: E402  (benchmarks/speed.py)
import torch  # noqa: E402
from training_quality import CONFIGS  # noqa: E402

from edm_space import data, devices  # noqa: E402
from edm_space.seeding import SeededNoise  # noqa: E402
from edm_space.training import TrainConfig, load_trained, read_log, train  # noqa: E402

DIGITS = CONFIGS["digits"]["train"]
CASE = "unet-digits"  # speed.py's case with the same network, batch and optimizer settings
SOLVER, NFE = "dpm++3m", 10
COMPARED_LOSSES = 5
SIZES = {
    "full": {"steps": DIGITS["steps"], "cpu_steps": COMPARED_LOSSES, "n": 10_000, "speed_rounds": 3, "net_options": dict(DIGITS["net_options"])},
    "tiny": {"steps": 6, "cpu_steps": COMPARED_LOSSES, "n": 32, "speed_rounds": 1, "net_options": dict(speed.QUICK[CASE]["net_options"])},
}
BATCH = {"full": DIGITS["batch"], "tiny": 16}
NETWORK_CHECK_ITEMS = 256
# Max relative difference of the first losses against the CPU fp32 run (see the module docstring).
TOLERANCE = {"same device, fp32": 0.0, "fp32": 5e-3, "bf16": 5e-2}
TOLERANCE_NETWORK = {"same device, fp32": 0.0, "fp32": 1e-2, "bf16": 5e-2}
# (network precision, sampler state dtype) of the sampling measurements.
SAMPLING_SETTINGS = (("fp32", "float64"), ("bf16", "float64"), ("fp32", "float32"))
STATE_DTYPES = {"float64": torch.float64, "float32": torch.float32}
BUDGET_S = 480.0
NO_GPU = "gpu_check: no CUDA GPU is present; nothing was measured or written (--allow-cpu --quick runs every part on the CPU)"


# ---------------------------------------------------------------------------
# 1-2. Training runs.


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def train_run(folder: str, sizes: Dict[str, Any], steps: int, device: torch.device, precision: str) -> Dict[str, Any]:
    """Train the digits U-Net for `steps` steps (log_every = 1) in FOLDER/<device>-<precision>; its losses, speed and memory."""
    run_dir = os.path.join(folder, f"{device.type}-{precision}-{steps}")
    config = TrainConfig(**{**DIGITS, "net_options": sizes["net_options"], "batch": sizes["batch"], "steps": steps, "log_every": 1,
                            "checkpoint_every": steps, "keep_checkpoints": 1, "out": run_dir})
    reset_peak_memory(device)
    start = time.perf_counter()
    train(config, progress=False, device=str(device), precision=precision)
    speed.synchronize(device)
    wall = time.perf_counter() - start
    log = read_log(run_dir)
    settled = log[max(1, len(log) // 10):] or log  # the first tenth holds the start-up (CUDA context, kernel choice)
    peaks = [e["peak_gpu_memory_mib"] for e in log if e.get("peak_gpu_memory_mib") is not None]
    print(f"  trained {steps} steps on {device} in {precision}: {wall:.1f} s, first losses "
          + ", ".join(f"{e['loss']:.6f}" for e in log[:COMPARED_LOSSES]), flush=True)
    return {
        "run_dir": run_dir,
        "device": str(device),
        "precision": precision,
        "steps": steps,
        "batch": config.batch,
        "wall_s": wall,
        "images_per_s_median": statistics.median(e["images_per_s"] for e in settled),
        "images_per_s_end_to_end": steps * config.batch / wall,
        "peak_gpu_memory_mib": max(peaks) if peaks else None,
        "first_losses": [e["loss"] for e in log[:COMPARED_LOSSES]],
        "final_loss": log[-1]["loss"],
    }


def _tolerance(table: Dict[str, float], device: torch.device, precision: str) -> float:
    return table["same device, fp32" if device.type == "cpu" and precision == "fp32" else precision]


def loss_agreement(run: Dict[str, Any], reference: Dict[str, Any]) -> Dict[str, Any]:
    """Max relative difference of the first logged losses of `run` against the CPU fp32 `reference`, and its tolerance."""
    a, b = run["first_losses"], reference["first_losses"]
    relative = max(abs(x - y) / abs(y) for x, y in zip(a, b))
    tolerance = _tolerance(TOLERANCE, torch.device(run["device"]), run["precision"])
    return {"device": run["device"], "precision": run["precision"], "against": f"{reference['device']} {reference['precision']}",
            "losses_compared": len(b), "max_relative_difference": relative, "tolerance": tolerance, "ok": relative <= tolerance}


def network_agreement(run_dir: str, device: torch.device, precisions: List[str]) -> List[Dict[str, Any]]:
    """The run's EMA denoiser on `device` at each precision against the same weights on the CPU in fp32 (see the docstring)."""
    reference, config, _, _, _ = load_trained(run_dir, device="cpu")
    denoiser = load_trained(run_dir, device=str(device))[0]
    generator = torch.Generator().manual_seed(1)
    x0 = data.load(config.data, n=NETWORK_CHECK_ITEMS, seed=1).to(torch.float64)
    sigma = reference.formulation.sample_training_sigma(len(x0), generator)
    x_hat = x0 + sigma.reshape(-1, 1, 1, 1) * torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    c_skip = reference.formulation.precond(sigma)[0].reshape(-1, 1, 1, 1)
    with torch.no_grad():
        r_cpu = reference(x_hat, sigma) - c_skip * x_hat
        rows = []
        for precision in precisions:
            denoiser.precision = precision
            r = denoiser(x_hat.to(device), sigma.to(device)).cpu() - c_skip * x_hat
            relative = float((r - r_cpu).norm() / r_cpu.norm())
            tolerance = _tolerance(TOLERANCE_NETWORK, device, precision)
            rows.append({"device": str(device), "precision": precision, "items": len(x0), "relative_difference": relative,
                         "tolerance": tolerance, "ok": relative <= tolerance})
            print(f"  network on {device} in {precision} against the CPU in fp32: relative difference {relative:.2e}", flush=True)
    return rows


# ---------------------------------------------------------------------------
# 4. Sampling in this process.


def bench_sampling(run_dir: str, n: int, device: torch.device, classifier) -> Tuple[List[Dict[str, Any]], torch.Tensor]:
    """samples/s of `n` samples (one batch) from the run's EMA weights with dpm++3m at 10 NFE, per SAMPLING_SETTINGS.

    Returns the rows and the samples of the first setting (float64, on the CPU)."""
    denoiser, _, item_shape, _, _ = load_trained(run_dir, device=str(device))
    steps = samplers.get(SOLVER).steps_for_nfe(NFE)
    noise = SeededNoise(range(n))  # sample i from seed i, as `edm-space sample` draws it
    latents = noise.randn([n, *item_shape], dtype=torch.float64).to(device)
    rows, first = [], None
    for precision, state in SAMPLING_SETTINGS:
        denoiser.precision = precision
        kwargs = dict(formulation=denoiser.formulation, solver=SOLVER, num_steps=steps, state_dtype=STATE_DTYPES[state], randn_like=noise.randn_like)
        with torch.no_grad():
            samplers.sample(denoiser, latents[: min(n, 64)], **kwargs)  # warm-up: kernels chosen and loaded outside the timing
            reset_peak_memory(device)
            speed.synchronize(device)
            start = time.perf_counter()
            info: Dict[str, Any] = {}
            x = samplers.sample(denoiser, latents, info=info, **kwargs)
            speed.synchronize(device)
            seconds = time.perf_counter() - start
        x = x.to("cpu", torch.float64)
        scores = common.classify_samples(classifier, x)
        rows.append({
            "precision": precision, "state_dtype": state, "n": n, "num_steps": steps, "nfe": info["nfe"], "seconds": seconds,
            "samples_per_s": n / seconds, "peak_gpu_memory_mib": devices.peak_memory_mib(device), "finite": bool(torch.isfinite(x).all()),
            "digit_mean_top_prob": scores["mean_top_prob"], "digit_min_class_fraction": scores["min_class_fraction"],
        })
        print(f"  sampled {n} in {precision} (state {state}): {n / seconds:.0f} samples/s, digit score {scores['mean_top_prob']:.3f}", flush=True)
        first = x if first is None else first
    return rows, first


# ---------------------------------------------------------------------------
# 5. One process against torchrun.


def _environment(device: torch.device) -> Dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [common.ROOT, os.environ.get("PYTHONPATH")])))
    if device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU run stays on the CPU (and torch.distributed on gloo) on any machine
    return env


def _run(command: List[str], device: torch.device) -> Dict[str, Any]:
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=common.ROOT, env=_environment(device), capture_output=True, text=True, timeout=300)
        status, output = done.returncode, (done.stdout + done.stderr).strip()
    except subprocess.TimeoutExpired:
        status, output = None, "timed out after 300 s"
    return {"command": " ".join(command), "returncode": status, "seconds": time.perf_counter() - start, "output_tail": output[-600:]}


def distributed_sampling(run_dir: str, n: int, processes: int, device: torch.device, folder: str) -> Dict[str, Any]:
    """`edm-space sample` as one process and under torchrun with `processes` processes: are the files equal?"""
    steps = samplers.get(SOLVER).steps_for_nfe(NFE)
    batch = math.ceil(n / processes)  # every process, and the single one, integrates batches of the same seeds
    arguments = ["sample", "--ckpt", run_dir, "--seeds", f"0-{n - 1}", "--solver", SOLVER, "--steps", str(steps), "--batch", str(batch),
                 "--device", "cpu" if device.type == "cpu" else "cuda", "--threads", "1"]
    single_path, many_path = os.path.join(folder, "single.npz"), os.path.join(folder, "torchrun.npz")
    single = _run([sys.executable, "-m", "edm_space.cli", *arguments, "--out", single_path], device)
    many = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                 "-m", "edm_space.cli", *arguments, "--out", many_path], device)
    result: Dict[str, Any] = {"processes": processes, "n": n, "batch": batch, "single": single, "torchrun": many,
                              "equal": False, "max_abs_difference": None, "single_samples": None}
    if single["returncode"] == 0 and many["returncode"] == 0:
        with np.load(single_path) as a, np.load(many_path) as b:
            result["equal"] = bool(np.array_equal(a["seeds"], b["seeds"]) and np.array_equal(a["samples"], b["samples"]))
            if a["samples"].shape == b["samples"].shape:
                result["max_abs_difference"] = float(np.abs(a["samples"] - b["samples"]).max())
            result["single_samples"] = torch.from_numpy(a["samples"])
    print(f"  {processes} torchrun process(es) against one: {'equal' if result['equal'] else 'NOT equal'} "
          f"({single['seconds']:.1f} s and {many['seconds']:.1f} s)", flush=True)
    return result


# ---------------------------------------------------------------------------
# Report.


def _mib(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.0f} MiB"


def summary_rows(payload: Dict[str, Any]) -> List[List[str]]:
    """The rows of the summary table: what, setting, result, check."""
    rows = []
    for item in payload["loss_agreement"]:
        rows.append(["loss agreement", f"{item['device']} {item['precision']} vs {item['against']}, first {item['losses_compared']} losses",
                     f"max relative difference {item['max_relative_difference']:.2e}", f"<= {item['tolerance']:g}: {'yes' if item['ok'] else '**no**'}"])
    for item in payload["network_agreement"]:
        rows.append(["network agreement", f"{item['device']} {item['precision']} vs cpu fp32, c_out F on {item['items']} noisy digits",
                     f"relative difference {item['relative_difference']:.2e}", f"<= {item['tolerance']:g}: {'yes' if item['ok'] else '**no**'}"])
    for run in payload["training"]:
        rows.append(["training", f"{run['device']} {run['precision']}, {run['steps']} steps of {run['batch']}",
                     f"{run['images_per_s_median']:.0f} images/s (log median), peak {_mib(run['peak_gpu_memory_mib'])}", "-"])
    for precision, res in payload["ours_vs_hand"].items():
        wall = res["median_images_per_s"]
        rows.append(["ours vs hand-written", f"{res['device']} {precision}, steady state",
                     f"{wall['ours']:.0f} / {wall['minimal']:.0f} / {wall['matched']:.0f} images/s (ours / minimal / matched); "
                     f"ours/minimal {res['wall_ratio_ours_over_minimal']['median']:.3f}", "-"])
    for row in payload["sampling"]:
        rows.append(["sampling", f"{row['n']} samples, {SOLVER} {row['nfe']} NFE, network {row['precision']}, state {row['state_dtype']}",
                     f"{row['samples_per_s']:.0f} samples/s, digit score {row['digit_mean_top_prob']:.3f}, peak {_mib(row['peak_gpu_memory_mib'])}",
                     f"finite: {'yes' if row['finite'] else '**no**'}"])
    dist = payload["distributed"]
    rows.append(["torchrun sampling", f"{dist['processes']} process(es) vs 1, {dist['n']} seeds, batch {dist['batch']}",
                 "max abs difference " + ("-" if dist["max_abs_difference"] is None else f"{dist['max_abs_difference']:.1e}"),
                 f"equal: {'yes' if dist['equal'] else '**no**'}"])
    rows.append(["peak memory", "all parts, this process", f"GPU {_mib(payload['peak_gpu_memory_mib'])}, resident {payload['peak_rss_mib']:.0f} MiB", "-"])
    rows.append(["wall time", "all parts", f"{payload['seconds']:.0f} s", f"budget {BUDGET_S:.0f} s on one GPU"])
    return rows


def markdown(payload: Dict[str, Any]) -> str:
    """The report, built from the JSON payload alone."""
    flags = " --quick" if payload["quick"] else ""
    flags += " --allow-cpu" if payload["device"] == "cpu" else ""
    lines = ["# GPU check: training, throughput, sampling and torchrun on one device", ""]
    if payload["device"] == "cpu":
        lines += ["(--allow-cpu smoke run: every part on the CPU at tiny sizes; the speeds say nothing about a GPU)", ""]
    lines += [f"Command: `python benchmarks/gpu_check.py{flags}` on {payload['accelerator'].get('gpu_name', payload['device'])}; "
              f"digits U-Net `{payload['net_options']}`, batch {payload['batch']}. All checks passed: **{'yes' if payload['ok'] else 'no'}**.", ""]
    lines += ["## Summary", "", common.markdown_table(["what", "setting", "result", "check"], summary_rows(payload)), ""]
    lines += ["## Training runs (log_every = 1)", ""]
    rows = [[r["device"], r["precision"], r["steps"], f"{r['wall_s']:.1f}", f"{r['images_per_s_median']:.0f}", f"{r['images_per_s_end_to_end']:.0f}",
             _mib(r["peak_gpu_memory_mib"]), ", ".join(f"{v:.6f}" for v in r["first_losses"]), f"{r['final_loss']:.4f}"] for r in payload["training"]]
    lines.append(common.markdown_table(["device", "precision", "steps", "wall s", "images/s (log median)", "images/s (end to end)", "peak GPU memory",
                                        "first losses", "final loss"], rows))
    lines += ["", "## Ours against hand-written PyTorch (speed.py's loops; steady state, median over rounds)", ""]
    rows = []
    for precision, res in payload["ours_vs_hand"].items():
        wall = res["median_images_per_s"]
        r, m = res["wall_ratio_ours_over_minimal"], res["wall_ratio_ours_over_matched"]
        rows.append([res["device"], precision, f"{res['long_steps']} - {res['short_steps']}", len(res["rounds"]),
                     f"{wall['ours']:.0f}", f"{wall['minimal']:.0f}", f"{wall['matched']:.0f}",
                     f"{r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f})", f"{m['median']:.3f} ({m['min']:.3f}-{m['max']:.3f})"])
    lines.append(common.markdown_table(["device", "precision", "steps", "rounds", "ours images/s", "minimal images/s", "matched images/s",
                                        "ours/minimal", "ours/matched"], rows))
    lines += ["", f"## Sampling ({SOLVER}, {NFE} NFE, the fp32 run's EMA weights, one batch)", ""]
    rows = [[r["n"], r["precision"], r["state_dtype"], r["nfe"], f"{r['seconds']:.3f}", f"{r['samples_per_s']:.0f}", _mib(r["peak_gpu_memory_mib"]),
             f"{r['digit_mean_top_prob']:.3f}", f"{r['digit_min_class_fraction']:.3f}"] for r in payload["sampling"]]
    lines.append(common.markdown_table(["samples", "network", "state", "NFE", "seconds", "samples/s", "peak GPU memory", "digit score (mean top prob)",
                                        "smallest class fraction"], rows))
    dist = payload["distributed"]
    lines += ["", "## One process against torchrun", "",
              f"`edm-space sample` with seeds 0-{dist['n'] - 1} and --batch {dist['batch']}, as one process ({dist['single']['seconds']:.1f} s) and "
              f"under torchrun with {dist['processes']} process(es) ({dist['torchrun']['seconds']:.1f} s): files equal: **{'yes' if dist['equal'] else 'no'}**; "
              f"the single-process file against this process's samples: max abs difference "
              + ("-" if dist["cli_vs_in_process_max_abs_difference"] is None else f"{dist['cli_vs_in_process_max_abs_difference']:.1e}") + ".", ""]
    lines += ["## Machine", "", common.machine_markdown(payload["machine"])]
    lines += [f"- {k}: {v}" for k, v in payload["accelerator"].items() if k != "device"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds); writes to a temporary folder unless --results-dir")
    parser.add_argument("--allow-cpu", action="store_true", help="without CUDA, run every part on the CPU at tiny sizes instead of stopping")
    parser.add_argument("--steps", type=int, default=None, help=f"training steps on the GPU [default: {SIZES['full']['steps']}]")
    parser.add_argument("--n", type=int, default=None, help=f"samples drawn [default: {SIZES['full']['n']:,}]")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on the CPU [default: 1]")
    parser.add_argument("--results-dir", default=None, help="where gpu_check.json / gpu_check.md go [default: benchmarks/results]")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(NO_GPU)
        return 0
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    tiny = args.quick or device.type == "cpu"
    sizes = dict(SIZES["tiny" if tiny else "full"], batch=BATCH["tiny" if tiny else "full"])
    for key in ("steps", "n"):
        value = getattr(args, key)
        if value is not None:
            if value < 1:
                parser.error(f"--{key} {value} is invalid; it must be >= 1")
            sizes[key] = value
    sizes["steps"] = max(sizes["steps"], COMPARED_LOSSES)
    common.set_threads(args.threads)
    results_dir = args.results_dir or (tempfile.mkdtemp(prefix="edm-space-gpu-check-") if tiny else common.RESULTS)
    precisions = ["fp32", "bf16"]
    processes = torch.cuda.device_count() if device.type == "cuda" else 2
    payload: Dict[str, Any] = {"quick": args.quick, "device": str(device), "machine": common.machine_info(), "accelerator": speed.device_info(device),
                               "net_options": sizes["net_options"], "batch": sizes["batch"], "sizes": sizes,
                               "tolerance": {"losses": TOLERANCE, "network": TOLERANCE_NETWORK}, "part_seconds": {}}
    started = time.perf_counter()
    work = tempfile.mkdtemp(prefix="edm-space-gpu-check-")
    try:
        print(f"[1-2] training the digits U-Net: {sizes['cpu_steps']} steps on the CPU, {sizes['steps']} steps on {device} in {' and '.join(precisions)}", flush=True)
        reference = train_run(work, sizes, sizes["cpu_steps"], torch.device("cpu"), "fp32")
        runs = [train_run(work, sizes, sizes["steps"], device, precision) for precision in precisions]
        payload["training"] = [reference] + runs
        payload["loss_agreement"] = [loss_agreement(run, reference) for run in runs]
        payload["network_agreement"] = network_agreement(runs[0]["run_dir"], device, precisions)
        payload["part_seconds"]["training"] = time.perf_counter() - started

        print(f"[3] ours against the hand-written loops on {device}", flush=True)
        mark = time.perf_counter()
        case = dict(speed.case_settings(CASE, quick=tiny, device=device), batch=sizes["batch"])  # the network and settings above
        payload["ours_vs_hand"] = {p: speed.bench_training(CASE, case, sizes["speed_rounds"], device, p) for p in precisions}
        payload["part_seconds"]["ours_vs_hand"] = time.perf_counter() - mark

        print(f"[4] sampling {sizes['n']} digits with {SOLVER} at {NFE} NFE on {device}", flush=True)
        mark = time.perf_counter()
        x, labels = data.load("digits", with_labels=True)
        classifier = common.fit_digit_classifier(x, labels)["model"]
        payload["sampling"], in_process = bench_sampling(runs[0]["run_dir"], sizes["n"], device, classifier)
        payload["part_seconds"]["sampling"] = time.perf_counter() - mark

        print(f"[5] edm-space sample: one process against torchrun with {processes}", flush=True)
        mark = time.perf_counter()
        dist = distributed_sampling(runs[0]["run_dir"], sizes["n"], processes, device, work)
        single = dist.pop("single_samples")
        dist["cli_vs_in_process_max_abs_difference"] = None if single is None else float((single - in_process).abs().max())
        payload["distributed"] = dist
        payload["part_seconds"]["distributed"] = time.perf_counter() - mark
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for run in payload["training"]:
        run.pop("run_dir")
    peaks = [r["peak_gpu_memory_mib"] for r in payload["training"] + payload["sampling"] if r["peak_gpu_memory_mib"] is not None]
    payload["peak_gpu_memory_mib"] = max(peaks) if peaks else None
    payload["peak_rss_mib"] = common.peak_rss_mb()
    payload["seconds"] = time.perf_counter() - started
    payload["ok"] = (all(item["ok"] for item in payload["loss_agreement"] + payload["network_agreement"])
                     and all(r["finite"] for r in payload["sampling"]) and payload["distributed"]["equal"])

    table = common.markdown_table(["what", "setting", "result", "check"], summary_rows(payload))
    paths = common.write_results("gpu_check", payload, markdown(payload), results_dir)
    print()
    print(table)
    print(f"\nall checks passed: {'yes' if payload['ok'] else 'NO'}; wrote {', '.join(paths)}")
    return 0 if payload["ok"] else 1


if __name__ == "__main__":
    with common.one_line_errors():
        sys.exit(main())
