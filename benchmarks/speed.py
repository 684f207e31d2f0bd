"""Training and sampling speed: the library's loop against hand-written PyTorch, measured side by side.

    python benchmarks/speed.py            # writes benchmarks/results/speed.{json,md}
    python benchmarks/speed.py --quick    # seconds; writes to a temporary folder unless --results-dir
    python benchmarks/speed.py --device cuda --precision fp32,bf16   # the same comparison on a GPU

Device and precision. --device (auto | cpu | cuda | cuda:N | mps) places every loop,
its data and its network on that device; --precision (a list of fp32, bf16, fp16;
default fp32 on the CPU, fp32,bf16 on CUDA) repeats the whole comparison per
precision, the hand-written loops running their forward pass under torch.autocast
exactly as train() does (and a GradScaler for fp16). On the CPU the primary clock
is the process's CPU time; on a GPU it is the wall time between
torch.cuda.synchronize() calls (CPU time says nothing about GPU work), and the
steady-state steps are more (CUDA_SETTINGS) so that the difference is measurable.
The breakdown ("ladder") is measured on the CPU in fp32 only.

Training. For each case (the MLP on moons at batch 256, the U-Net on 8x8 digits
at batch 64, both with the network options training_quality.py uses) one round
runs, in alternating order,

- ours:    edm_space.training.train(TrainConfig(...)) in a fresh run directory:
           EDM loss through Formulation.loss, Adam, warm-up, grad clipping, EMA,
           per-sigma loss logging, a final checkpoint;
- minimal: a hand-written loop with the same network, initialisation, batch,
           data and EDM loss (same preconditioning, sigma_data from the data),
           Adam with the same settings; no clipping, EMA, logging or checkpoints;
           its random draws are made on the device itself (train() draws on the
           CPU and moves them, so that runs agree across devices);
- matched: the minimal loop plus what the library's loop does to the weights:
           its optimizer (edm_space.training.make_optimizer), lr warm-up,
           grad-norm clipping and an EMA with the same half-life and ramp-up,
           written with torch._foreach_lerp_.

Every loop is run twice back to back, for S and for L > S steps, each call
with its own set-up (data, network, optimizer; for train() also the run
directory, config.json, log lines and the final checkpoint). The difference
L - S is the steady-state cost of L - S training steps; set-up, warm-up and the
checkpoint cancel. Both the process's CPU time (time.process_time; one torch
thread, so it is the work done, and it is barely disturbed by other processes
on a shared machine) and the wall time are recorded. Rounds alternate the order
of the loops; per round the ratios ours / minimal and ours / matched are
taken, and the median over rounds is reported with its range. The target is
ours / minimal >= 0.9 (images per CPU-second on the CPU, per wall-second on a GPU;
the other clock's ratio is shown beside it). End-to-end throughput (the L-step call, set-up included) is shown too.

Sampling. samplers.sample(Denoiser(net, edm), heun, 18 steps = 35 NFE) against a
hand-written EDM Heun loop (EDM Algorithm 1, float64 state, the network at the
precision measured) on the same latents; samples/s, best of the rounds.

Breakdown ("ladder"). The minimal loop with train()'s pieces added one at a
time (library batch draws and Formulation.loss; grad clipping; the EMA; the
finite-loss check and per-sigma logging; Adam with fused=True), so that a
shortfall can be traced to lines of training.py.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (puts the repository root on sys.path)
import torch  # noqa: E402

from edm_space import devices  # noqa: E402
from edm_space.errors import ConfigError  # noqa: E402

CPU = torch.device("cpu")

CASES = {
    "mlp-moons": {"data": "moons", "net": "mlp", "quality_config": "toy", "batch": 256, "short_steps": 20, "long_steps": 220, "sample_n": 4096},
    "unet-digits": {"data": "digits", "net": "unet", "quality_config": "digits", "batch": 64, "short_steps": 4, "long_steps": 34, "sample_n": 256},
}
QUICK = {
    "mlp-moons": {"short_steps": 3, "long_steps": 15, "sample_n": 256, "net_options": {"width": 64, "depth": 2}},
    "unet-digits": {"short_steps": 2, "long_steps": 6, "sample_n": 16, "net_options": {"channels": 8, "channel_mult": [1, 2], "blocks_per_level": 1}},
}
# On a GPU a step takes milliseconds: more steady-state steps, and more samples per call, keep the timed
# difference well above the clock's and the launch queue's jitter (not used with --quick).
CUDA_SETTINGS = {
    "mlp-moons": {"short_steps": 50, "long_steps": 550, "sample_n": 65536},
    "unet-digits": {"short_steps": 20, "long_steps": 220, "sample_n": 4096},
}


def case_settings(name: str, quick: bool, device: Optional[torch.device] = None) -> Dict[str, Any]:
    """The case's batch, steps, network options and train() settings (those of training_quality.py)."""
    from training_quality import CONFIGS

    case = dict(CASES[name])
    quality = CONFIGS[case["quality_config"]]["train"]
    case["net_options"] = dict(quality["net_options"])
    case["train"] = {k: quality[k] for k in ("lr", "warmup_images", "grad_clip", "ema_halflife_images", "ema_rampup_ratio")}
    if quick:
        case.update(QUICK[name])
    elif device is not None and device.type != "cpu":
        case.update(CUDA_SETTINGS[name])
    return case


def default_precisions(device: torch.device) -> List[str]:
    """fp32 on the CPU (its bf16 autocast is slower there), fp32 and bf16 on CUDA."""
    return ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]


def parse_precisions(text: str, device: torch.device) -> List[str]:
    """'fp32,bf16' -> ["fp32", "bf16"], each checked against the device (one-line ConfigError otherwise)."""
    names = list(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))
    if not names:
        raise ConfigError(f"--precision {text!r} is invalid; give a comma-separated list of {', '.join(devices.PRECISIONS)}")
    for name in names:
        devices.check_precision(name, device)
    return names


def device_info(device: torch.device) -> Dict[str, Any]:
    """The accelerator the numbers were measured on (empty for the CPU, which machine_info describes)."""
    if device.type != "cuda":
        return {"device": str(device)}
    props = torch.cuda.get_device_properties(device)
    return {
        "device": str(device),
        "gpu_name": props.name,
        "gpu_count": torch.cuda.device_count(),
        "gpu_memory_gib": props.total_memory / 2**30,
        "compute_capability": f"{props.major}.{props.minor}",
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        # fp32 convolutions on CUDA run in TF32 unless this is off; matmuls only when the second is on.
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }


# ---------------------------------------------------------------------------
# The three training loops.


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (GPU kernels run asynchronously to the Python that launches them)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _clock(device: torch.device = CPU) -> Tuple[float, float]:
    """(wall seconds, CPU seconds of this process), read after the device's queued work has finished."""
    synchronize(device)
    return time.perf_counter(), time.process_time()


def run_ours(case: Dict[str, Any], steps: int, device: torch.device = CPU, precision: str = "fp32") -> Dict[str, float]:
    """One call of edm_space.training.train for `steps` steps in a fresh run directory: wall and CPU seconds of the call."""
    from edm_space.training import TrainConfig, train

    run_dir = tempfile.mkdtemp(prefix="edm-space-speed-")
    try:
        config = TrainConfig(
            preset="edm", data=case["data"], net=case["net"], net_options=case["net_options"], batch=case["batch"], steps=steps,
            log_every=50, checkpoint_every=steps, out=run_dir, seed=0, **case["train"],
        )
        wall, cpu = _clock(device)
        train(config, progress=False, device=str(device), precision=precision)
        wall_end, cpu_end = _clock(device)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"wall": wall_end - wall, "cpu": cpu_end - cpu}


def run_hand(case: Dict[str, Any], steps: int, matched: bool, device: torch.device = CPU, precision: str = "fp32") -> Dict[str, Any]:
    """A minimal EDM training loop, written out (set-up included, as in train()); `matched` adds warm-up, clipping and EMA.

    Returns wall and CPU seconds and the dtype of the network's output (bfloat16 under bf16 autocast).
    """
    from edm_space import networks
    from edm_space.data import load

    wall, cpu = _clock(device)
    x = load(case["data"])
    sd = float(x.double().std())  # sigma_data, as train() estimates it
    x = x.to(device)
    torch.manual_seed(0)
    net = networks.build(case["net"], tuple(x.shape[1:]), **case["net_options"]).to(device)
    if matched:
        from edm_space.training import make_optimizer

        optimizer = make_optimizer(net, case["train"]["lr"])
    else:
        optimizer = torch.optim.Adam(net.parameters(), lr=case["train"]["lr"], betas=(0.9, 0.999), eps=1e-8)
    scaler = devices.grad_scaler(device, precision)  # fp16 only: its gradients underflow without loss scaling
    params = list(net.parameters())
    if matched:
        ema = copy.deepcopy(net).eval().requires_grad_(False)
        ema_params = list(ema.parameters())
    generator = torch.Generator(device).manual_seed(0)
    batch, shape = case["batch"], (-1,) + (1,) * (x.ndim - 1)
    for step in range(steps):
        index = torch.randint(len(x), (batch,), generator=generator, device=device)
        x0 = x[index]
        sigma = (torch.randn(batch, generator=generator, device=device) * 1.2 - 1.2).exp()  # ln sigma ~ N(-1.2, 1.2^2)
        noise = torch.randn(x0.shape, generator=generator, device=device)
        s = sigma.reshape(shape)
        x_hat = x0 + s * noise
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        c_in = 1 / (s**2 + sd**2).sqrt()
        with devices.autocast(device, precision):
            output = net(c_in * x_hat, sigma.log() / 4)
            loss = ((output.float() - (x0 - c_skip * x_hat) / c_out) ** 2).mean()  # lambda c_out^2 = 1 for edm
        if matched:
            images = (step + 1) * batch
            warm = case["train"]["warmup_images"]
            optimizer.param_groups[0]["lr"] = case["train"]["lr"] * (min(images / warm, 1.0) if warm else 1.0)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
        else:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        if matched:
            torch.nn.utils.clip_grad_norm_(params, case["train"]["grad_clip"], foreach=True)
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()
        if matched:
            halflife = case["train"]["ema_halflife_images"]
            if case["train"]["ema_rampup_ratio"] is not None:
                halflife = min(halflife, images * case["train"]["ema_rampup_ratio"])
            beta = 0.5 ** (batch / max(halflife, 1e-8))
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1.0 - beta)
    float(loss.detach())
    wall_end, cpu_end = _clock(device)
    return {"wall": wall_end - wall, "cpu": cpu_end - cpu, "output_dtype": str(output.dtype)}


LOOPS = ("ours", "minimal", "matched")


def run_loop(loop: str, case: Dict[str, Any], steps: int, device: torch.device = CPU, precision: str = "fp32") -> Dict[str, Any]:
    if loop == "ours":
        return run_ours(case, steps, device, precision)
    return run_hand(case, steps, matched=loop == "matched", device=device, precision=precision)


def primary_clock(device: torch.device) -> str:
    """The key whose throughput is compared: CPU time on the CPU (robust to other processes), wall time on an accelerator."""
    return "images_per_cpu_s" if device.type == "cpu" else "images_per_s"


def bench_training(name: str, case: Dict[str, Any], rounds: int, device: torch.device = CPU, precision: str = "fp32") -> Dict[str, Any]:
    """Per round and loop: a short and a long run back to back; their difference is the steady-state cost of the extra steps."""
    short, long = case["short_steps"], case["long_steps"]
    images = (long - short) * case["batch"]
    primary = primary_clock(device)
    # Warm-up: first-use costs (imports, Adam's first construction, the allocator, CUDA kernels) stay out of the rounds.
    output_dtype = {loop: run_loop(loop, case, 2, device, precision).get("output_dtype") for loop in LOOPS}
    per_round: List[Dict[str, Any]] = []
    for r in range(rounds):
        order = list(LOOPS) if r % 2 == 0 else list(LOOPS)[::-1]  # alternate who goes first
        cpu, wall, e2e = {}, {}, {}
        for loop in order:
            a = run_loop(loop, case, short, device, precision)
            b = run_loop(loop, case, long, device, precision)
            cpu[loop] = images / max(b["cpu"] - a["cpu"], 1e-9)
            wall[loop] = images / max(b["wall"] - a["wall"], 1e-9)
            e2e[loop] = long * case["batch"] / b["wall"]
        per_round.append({"order": order, "images_per_cpu_s": cpu, "images_per_s": wall, "end_to_end_images_per_s": e2e})
        shown = cpu if primary == "images_per_cpu_s" else wall
        unit = "images per CPU-second" if primary == "images_per_cpu_s" else "images per second"
        print(f"  [{name} {precision}] round {r + 1}/{rounds}: " + ", ".join(f"{k} {shown[k]:.0f}" for k in LOOPS)
              + f" {unit}; ours/minimal {cpu['ours'] / cpu['minimal']:.3f} (wall {wall['ours'] / wall['minimal']:.3f}), "
              f"ours/matched {cpu['ours'] / cpu['matched']:.3f} (wall {wall['ours'] / wall['matched']:.3f})", flush=True)

    def summary(key: str, a: str, b: str) -> Dict[str, Any]:
        ratios = [r[key][a] / r[key][b] for r in per_round]
        return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "per_round": ratios}

    return {
        "device": str(device),
        "precision": precision,
        "clock": "process_time" if primary == "images_per_cpu_s" else "wall (device synchronized)",
        "short_steps": short,
        "long_steps": long,
        "rounds": per_round,
        "network_output_dtype": output_dtype,
        "median_images_per_cpu_s": {k: statistics.median(r["images_per_cpu_s"][k] for r in per_round) for k in LOOPS},
        "median_images_per_s": {k: statistics.median(r["images_per_s"][k] for r in per_round) for k in LOOPS},
        # On the primary clock (see primary_clock); the cpu_ and wall_ variants name theirs.
        "ratio_ours_over_minimal": summary(primary, "ours", "minimal"),
        "ratio_ours_over_matched": summary(primary, "ours", "matched"),
        "cpu_ratio_ours_over_minimal": summary("images_per_cpu_s", "ours", "minimal"),
        "cpu_ratio_ours_over_matched": summary("images_per_cpu_s", "ours", "matched"),
        "wall_ratio_ours_over_minimal": summary("images_per_s", "ours", "minimal"),
        "wall_ratio_ours_over_matched": summary("images_per_s", "ours", "matched"),
        "end_to_end_ratio_ours_over_minimal": summary("end_to_end_images_per_s", "ours", "minimal"),
    }


# ---------------------------------------------------------------------------
# Sampling.


def hand_heun(net: torch.nn.Module, latents: torch.Tensor, sd: float, num_steps: int = 18, precision: str = "fp32") -> torch.Tensor:
    """EDM Algorithm 1 (deterministic Heun, rho = 7, sigma in [0.002, 80]) with the edm preconditioning, written out;
    float64 state on the latents' device, the network's forward under autocast at `precision`."""
    sigma_min, sigma_max, rho = 0.002, 80.0, 7.0
    i = torch.arange(num_steps, dtype=torch.float64)
    t = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t = torch.cat([t, torch.zeros(1, dtype=torch.float64)])

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / math.sqrt(sigma**2 + sd**2)
        c_in = 1 / math.sqrt(sigma**2 + sd**2)
        c_noise = torch.full((x.shape[0],), math.log(sigma) / 4, dtype=torch.float32, device=x.device)
        with devices.autocast(x.device, precision):
            output = net((c_in * x).float(), c_noise)
        return c_skip * x + c_out * output.double()

    x = latents.double() * t[0]
    for k in range(num_steps):
        t_cur, t_next = float(t[k]), float(t[k + 1])
        d = (x - denoise(x, t_cur)) / t_cur
        x_next = x + (t_next - t_cur) * d
        if k < num_steps - 1:
            d2 = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x + (t_next - t_cur) * (0.5 * d + 0.5 * d2)
        x = x_next
    return x


def bench_sampling(name: str, case: Dict[str, Any], rounds: int, device: torch.device = CPU, precision: str = "fp32") -> Dict[str, Any]:
    """samplers.sample against hand_heun on the same latents and weights: samples/s, best of `rounds` (after a warm-up round)."""
    import presets
    import samplers
    from edm_space import networks
    from edm_space.data import load, estimate_sigma_data
    from edm_space.denoiser import Denoiser

    x = load(case["data"])
    sd = round(estimate_sigma_data(x), 6)
    torch.manual_seed(0)
    net = networks.build(case["net"], tuple(x.shape[1:]), **case["net_options"]).eval().requires_grad_(False)
    # The output layer starts at zero; give it weights so that F is not identically 0 (the cost is the same).
    with torch.no_grad():
        for p in net.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.01)
    net = net.to(device)
    formulation = presets.get("edm", sigma_data=sd)
    denoiser = Denoiser(net, formulation, precision=precision)
    n = case["sample_n"]
    latents = torch.randn((n, *x.shape[1:]), dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(device)
    primary = "cpu" if device.type == "cpu" else "wall"
    wall: Dict[str, List[float]] = {"ours": [], "hand": []}
    cpu: Dict[str, List[float]] = {"ours": [], "hand": []}
    nfe = None
    with torch.no_grad():
        for r in range(rounds + 1):  # round 0 is warm-up
            for which in (["ours", "hand"] if r % 2 == 0 else ["hand", "ours"]):
                start_wall, start_cpu = _clock(device)
                if which == "ours":
                    info: Dict[str, Any] = {}
                    out_ours = samplers.sample(denoiser, latents, formulation=formulation, solver="heun", num_steps=18, info=info)
                    nfe = info["nfe"]
                else:
                    out_hand = hand_heun(net, latents, sd, precision=precision)
                end_wall, end_cpu = _clock(device)
                if r:
                    wall[which].append(end_wall - start_wall)
                    cpu[which].append(end_cpu - start_cpu)
        difference_vs_fp32 = None
        if precision != "fp32":  # evidence that the precision took effect: the same sampler with the network in fp32
            reference = samplers.sample(Denoiser(net, formulation), latents, formulation=formulation, solver="heun", num_steps=18)
            difference_vs_fp32 = float((out_ours - reference).abs().max())
    difference = float((out_ours - out_hand).abs().max())
    best = {k: min(v) for k, v in wall.items()}
    timed = cpu if primary == "cpu" else wall
    ratios = [h / o for o, h in zip(timed["ours"], timed["hand"])]
    print(f"  [{name} {precision}] sampling: ours {n / best['ours']:.0f} samples/s, hand-written Heun {n / best['hand']:.0f} samples/s ({nfe} NFE)", flush=True)
    return {
        "device": str(device),
        "precision": precision,
        "clock": "process_time" if primary == "cpu" else "wall (device synchronized)",
        "max_abs_difference_vs_fp32": difference_vs_fp32,
        "n": n,
        "solver": "heun",
        "num_steps": 18,
        "nfe": nfe,
        "samples_per_s_ours": n / best["ours"],
        "samples_per_s_hand": n / best["hand"],
        "samples_per_cpu_s_ours": n / min(cpu["ours"]),
        "ms_per_nfe_ours": 1000 * best["ours"] / nfe,
        "ratio_ours_over_hand_median": statistics.median(ratios),
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "max_abs_difference_ours_vs_hand": difference,
    }


# ---------------------------------------------------------------------------
# Breakdown of the loop's extras.


LADDER = (
    "minimal loop",
    "+ library batch draws (step_generator, p_train) and Formulation.loss",
    "+ grad-norm clipping (foreach, as train())",
    "+ EMA as one torch._foreach_lerp_ (as train())",
    "+ finite-loss check and per-sigma loss logging",
    "as the previous, Adam(fused=True) (= the body of train()'s step)",
)


def ladder_loop(case: Dict[str, Any], level: int, steps: int, x: torch.Tensor, formulation, config) -> float:
    """CPU seconds of `steps` steps of a loop that has the first `level` pieces of train()'s step (see LADDER)."""
    from edm_space import networks
    from edm_space.training import ema_beta, sigma_bucket, step_generator

    torch.manual_seed(0)
    net = networks.build(case["net"], tuple(x.shape[1:]), **case["net_options"])
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    params, ema_params = list(net.parameters()), list(ema.parameters())
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, betas=(0.9, 0.999), eps=1e-8, **({"fused": True} if level >= 5 else {}))
    generator = torch.Generator().manual_seed(0)
    batch, sd, shape = config.batch, formulation.preconditioning.sigma_data, (-1,) + (1,) * (x.ndim - 1)
    bucket_sum = torch.zeros(9, dtype=torch.float64)
    bucket_count = torch.zeros(9, dtype=torch.float64)
    start = time.process_time()
    for step in range(steps):
        if level >= 1:
            draw = step_generator(config.seed, step)
            index = torch.randint(len(x), (batch,), generator=draw)
            sigma = formulation.sample_training_sigma(batch, draw)
            noise = torch.randn((batch, *x.shape[1:]), generator=draw)
            per_example = formulation.loss(net, x[index], sigma=sigma, noise=noise)
            loss = per_example.mean()
        else:
            index = torch.randint(len(x), (batch,), generator=generator)
            x0 = x[index]
            sigma = (torch.randn(batch, generator=generator) * 1.2 - 1.2).exp()
            s = sigma.reshape(shape)
            x_hat = x0 + s * torch.randn(x0.shape, generator=generator)
            output = net(x_hat / (s**2 + sd**2).sqrt(), sigma.log() / 4)
            loss = ((output - (x0 - sd**2 / (s**2 + sd**2) * x_hat) / (s * sd / (s**2 + sd**2).sqrt())) ** 2).mean()
        images = (step + 1) * batch
        for group in optimizer.param_groups:
            group["lr"] = config.lr * min(images / config.warmup_images, 1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if level >= 4:
            global_loss = loss.detach().clone()
            bool(torch.isfinite(global_loss))
        if level >= 2:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip, foreach=True)
        optimizer.step()
        if level >= 3:
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1.0 - ema_beta(config, images))
        if level >= 4:
            with torch.no_grad():
                which = sigma_bucket(sigma)
                bucket_sum.index_add_(0, which, per_example.detach().to(torch.float64))
                bucket_count.index_add_(0, which, torch.ones_like(which, dtype=torch.float64))
            float(global_loss)
    return time.process_time() - start


def bench_ladder(name: str, case: Dict[str, Any], rounds: int) -> Dict[str, Any]:
    """Where train()'s extra time per step goes: add its pieces to the minimal loop one at a time (CPU ms per step)."""
    import presets
    from edm_space.data import estimate_sigma_data, load
    from edm_space.training import TrainConfig

    x = load(case["data"])
    formulation = presets.get("edm", sigma_data=round(estimate_sigma_data(x), 6))
    config = TrainConfig(batch=case["batch"], seed=0, **case["train"])
    levels = range(len(LADDER))
    try:
        ladder_loop(case, len(LADDER) - 1, 1, x, formulation, config)
    except (RuntimeError, TypeError):  # no fused Adam for this device / torch
        levels = range(len(LADDER) - 1)
    for level in levels:
        ladder_loop(case, level, 2, x, formulation, config)
    short, long = case["short_steps"], case["long_steps"]
    ms: Dict[int, List[float]] = {level: [] for level in levels}
    for r in range(rounds):
        for level in (list(levels) if r % 2 == 0 else list(levels)[::-1]):
            a = ladder_loop(case, level, short, x, formulation, config)
            b = ladder_loop(case, level, long, x, formulation, config)
            ms[level].append(1000 * (b - a) / (long - short))
    base = statistics.median(ms[0])
    rows = []
    for level in levels:
        median = statistics.median(ms[level])
        ratios = [m0 / m for m0, m in zip(ms[0], ms[level])]
        rows.append({"level": level, "what": LADDER[level], "cpu_ms_per_step": median, "extra_ms": median - base,
                     "ratio_minimal_over_this": statistics.median(ratios), "per_round_ms": ms[level]})
    print(f"  [{name}] ladder: " + ", ".join(f"{r['level']}: {r['cpu_ms_per_step']:.2f} ms ({r['ratio_minimal_over_this']:.3f})" for r in rows), flush=True)
    return {"rounds": rounds, "steps": [short, long], "levels": rows}


# ---------------------------------------------------------------------------


def _range(summary: Dict[str, Any], bold: bool = False) -> str:
    median = f"**{summary['median']:.3f}**" if bold else f"{summary['median']:.3f}"
    return f"{median} ({summary['min']:.3f}-{summary['max']:.3f})"


def command_line(payload: Dict[str, Any]) -> str:
    """The command that reproduces the payload."""
    parts = ["python benchmarks/speed.py"]
    if payload["quick"]:
        parts.append("--quick")
    device = payload.get("device", "cpu")
    if device != "cpu":
        parts.append(f"--device {device}")
    precisions = payload.get("precisions", ["fp32"])
    if precisions != ["fp32"]:
        parts.append(f"--precision {','.join(precisions)}")
    return " ".join(parts)


def markdown(payload: Dict[str, Any]) -> str:
    on_cpu = payload.get("device", "cpu") == "cpu"
    lines = ["# Speed: our training loop and sampler against hand-written PyTorch", ""]
    if payload["quick"]:
        lines += ["(--quick smoke run: tiny networks and few steps; the ratios are not meaningful)", ""]
    clock = "CPU time of the process" if on_cpu else "wall time between device synchronizations"
    lines += [f"Command: `{command_line(payload)}` ({payload['rounds']} interleaved rounds, torch threads {payload['machine']['torch_threads']}; "
              f"device {payload.get('device', 'cpu')}, compared on the {clock}).", ""]
    lines += ["## Training throughput (steady state; median over rounds, range in brackets)", ""]
    rows = []
    for precision, training in payload["training_by_precision"].items():
        for name, res in training.items():
            case = payload["cases"][name]
            r = res["ratio_ours_over_minimal"]
            cpu, wall = res["median_images_per_cpu_s"], res["median_images_per_s"]
            rows.append([
                name, precision, case["batch"], f"`{case['net_options']}`",
                " / ".join(f"{cpu[k]:.0f}" for k in LOOPS) if on_cpu else "n/a (GPU work)",
                " / ".join(f"{wall[k]:.0f}" for k in LOOPS),
                _range(res["cpu_ratio_ours_over_minimal"], bold=on_cpu) if on_cpu else "n/a",
                _range(res["wall_ratio_ours_over_minimal"], bold=not on_cpu),
                _range(res["cpu_ratio_ours_over_matched"]) if on_cpu else "n/a",
                _range(res["wall_ratio_ours_over_matched"]),
                f"{res['end_to_end_ratio_ours_over_minimal']['median']:.3f}",
                "yes" if r["median"] >= 0.9 else "**no**",
            ])
    lines.append(common.markdown_table(
        ["case", "precision", "batch", "net options", "images per CPU-s: ours / minimal / matched", "images per wall-s: ours / minimal / matched",
         "ours/minimal (CPU)", "ours/minimal (wall)", "ours/matched (CPU)", "ours/matched (wall)", "end-to-end ours/minimal (wall)",
         "ours/minimal >= 0.9"], rows))
    lines += ["", "`minimal`: Adam on the EDM loss, nothing else. `matched`: plus train()'s optimizer (fused Adam where available), lr warm-up, grad-norm clipping and an EMA written with "
              "torch._foreach_lerp_, i.e. the same work on the weights as train(). Steady state = the difference of an "
              "L-step and an S-step call. End-to-end = the L-step call with its set-up (train(): run directory, config, final checkpoint). "
              "bf16 / fp16: every loop runs its forward pass under torch.autocast; weights and optimizer state stay float32.", ""]
    lines += ["## Sampling throughput (heun, 18 steps, 35 NFE, untrained weights: the cost does not depend on them)", ""]
    rows = []
    for precision, sampling in payload["sampling_by_precision"].items():
        for name, res in sampling.items():
            vs_fp32 = res.get("max_abs_difference_vs_fp32")
            rows.append([name, precision, res["n"], res["nfe"], f"{res['samples_per_s_ours']:.0f}", f"{res['ms_per_nfe_ours']:.1f}",
                         f"{res['samples_per_s_hand']:.0f}", f"{res['ratio_ours_over_hand_median']:.3f}", f"{res['max_abs_difference_ours_vs_hand']:.1e}",
                         "-" if vs_fp32 is None else f"{vs_fp32:.1e}"])
    lines.append(common.markdown_table(["case", "precision", "batch of samples", "NFE", "samples/s (samplers.sample)", "ms per NFE", "samples/s (hand Heun)",
                                        f"ours/hand ({'CPU' if on_cpu else 'wall'})", "max abs diff", "max abs diff vs fp32 network"], rows))
    if payload.get("breakdown"):
        lines += ["", "## Where train()'s extra time goes (CPU ms per step, fp32 on the CPU, median over rounds)", "",
                  "The minimal loop with train()'s pieces added one at a time (a replica of the step body of "
                  "edm_space/training.py, built from its own functions); the last row is train()'s step.", ""]
        rows = []
        for name, res in payload["breakdown"].items():
            for row in res["levels"]:
                rows.append([name, row["level"], row["what"], f"{row['cpu_ms_per_step']:.2f}", f"{row['extra_ms']:+.2f}", f"{row['ratio_minimal_over_this']:.3f}"])
        lines.append(common.markdown_table(["case", "level", "loop", "CPU ms / step", "vs minimal", "minimal / this (throughput ratio)"], rows))
    lines += ["", "## Machine", "", common.machine_markdown(payload["machine"])]
    accelerator = payload.get("accelerator", {})
    lines += [f"- {k}: {v}" for k, v in accelerator.items() if k != "device"]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run; writes to a temporary folder unless --results-dir")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds [default: 7, or 1 with --quick]")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads [default: 1; see the README of the results]")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available, else the CPU), cpu, cuda, cuda:N or mps [default: auto]")
    parser.add_argument("--precision", default=None, help="comma-separated list of fp32, bf16, fp16 [default: fp32 on the CPU, fp32,bf16 on CUDA]")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the ladder breakdown of train()'s step (measured on the CPU only)")
    parser.add_argument("--results-dir", default=None, help="where speed.json / speed.md go [default: benchmarks/results]")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when ours/minimal < 0.9 for a case")
    args = parser.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 7)
    if rounds < 1:
        parser.error(f"--rounds {rounds} is invalid; it must be >= 1")
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in names if c not in CASES]
    if bad or not names:
        parser.error(f"--cases {args.cases!r} is invalid; choose from {', '.join(CASES)}")
    with common.one_line_errors():
        device = devices.resolve_device(args.device)
        precisions = parse_precisions(args.precision, device) if args.precision is not None else default_precisions(device)
    common.set_threads(args.threads)
    machine = common.machine_info()
    results_dir = args.results_dir or (tempfile.mkdtemp(prefix="edm-space-speed-") if args.quick else common.RESULTS)
    cases = {name: case_settings(name, args.quick, device) for name in names}
    payload: Dict[str, Any] = {"quick": args.quick, "rounds": rounds, "machine": machine, "device": str(device), "accelerator": device_info(device),
                               "precisions": precisions, "training": {}, "sampling": {}, "breakdown": {},
                               "training_by_precision": {p: {} for p in precisions}, "sampling_by_precision": {p: {} for p in precisions},
                               "cases": {k: {kk: vv for kk, vv in v.items()} for k, v in cases.items()}}
    started = time.perf_counter()
    for precision in precisions:
        for name, case in cases.items():
            print(f"[{name} {precision} on {device}] training: ours vs minimal vs matched, {rounds} rounds of {case['long_steps']} - {case['short_steps']} steps", flush=True)
            payload["training_by_precision"][precision][name] = bench_training(name, case, rounds, device, precision)
            payload["sampling_by_precision"][precision][name] = bench_sampling(name, case, max(1, min(rounds, 3)), device, precision)
            if not args.no_breakdown and device.type == "cpu" and precision == "fp32":
                payload["breakdown"][name] = bench_ladder(name, case, max(1, min(rounds, 5)))
    # The keys of a single-precision run, kept for readers of earlier results: the first precision listed.
    payload["training"] = payload["training_by_precision"][precisions[0]]
    payload["sampling"] = payload["sampling_by_precision"][precisions[0]]
    payload["seconds"] = time.perf_counter() - started

    print()
    unit = "images per CPU-second" if device.type == "cpu" else "images per second (wall)"
    print(f"{unit} (steady state, median over rounds); samples/s at 35 NFE; device {device}")
    print(f"{'case':<12} {'precision':>9} {'ours':>8} {'minimal':>8} {'matched':>8} {'ours/min':>9} {'ours/match':>10} {'samples/s':>10}")
    ok = True
    key = "median_images_per_cpu_s" if device.type == "cpu" else "median_images_per_s"
    for precision in precisions:
        for name in names:
            t, s = payload["training_by_precision"][precision][name], payload["sampling_by_precision"][precision][name]
            ratio = t["ratio_ours_over_minimal"]["median"]
            ok = ok and ratio >= 0.9
            print(f"{name:<12} {precision:>9} {t[key]['ours']:>8.0f} {t[key]['minimal']:>8.0f} {t[key]['matched']:>8.0f} "
                  f"{ratio:>9.3f} {t['ratio_ours_over_matched']['median']:>10.3f} {s['samples_per_s_ours']:>10.0f}")
    for name, res in payload["breakdown"].items():
        print(f"{name} ladder (CPU ms/step): " + ", ".join(f"{r['level']}: {r['cpu_ms_per_step']:.2f}" for r in res["levels"]))
    paths = common.write_results("speed", payload, markdown(payload), results_dir)
    print(f"wrote {', '.join(paths)}")
    return 1 if (args.strict and not ok) else 0


if __name__ == "__main__":
    sys.exit(main())
