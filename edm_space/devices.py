"""Where and in which precision a network runs: --device, --precision, --compile.

    device = resolve_device("auto")               # cuda (this process's LOCAL_RANK under torchrun) or cpu
    with autocast(device, "bf16"):                 # the network's forward in bfloat16; weights stay float32
        loss = ...

Randomness never depends on the device: every draw is made on the CPU from seeded
generators and moved, so a run on a GPU sees the draws a CPU run sees.
"""

from __future__ import annotations

import contextlib
import os
from typing import Dict, Optional

import torch
from torch import nn

from .errors import ConfigError

PRECISIONS: Dict[str, Optional[torch.dtype]] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def available() -> str:
    """The devices this machine offers, in words, for error messages."""
    found = ["cpu"]
    count = _cuda_count()
    if count:
        found.append(f"cuda (cuda:0..cuda:{count - 1})")
    if _mps_available():
        found.append("mps")
    return ", ".join(found)


def resolve_device(name: str = "auto") -> torch.device:
    """The torch.device for auto | cpu | cuda | cuda:N | mps, or a one-line error naming what is available.

    auto is CUDA where there is one, else the CPU. Under torchrun (LOCAL_RANK set) "auto" and
    "cuda" take the GPU of the process's LOCAL_RANK.
    """
    text = str(name).strip().lower()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if text == "auto":
        text = "cuda" if _cuda_count() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise ConfigError(f"--device mps is not available on this machine; available: {available()}")
        return torch.device("mps")
    if text == "cuda" or text.startswith("cuda:"):
        count = _cuda_count()
        if not count:
            raise ConfigError(f"--device {name} needs CUDA, which this machine does not have; available: {available()}")
        index = local_rank if text == "cuda" else text.partition(":")[2]
        try:
            index = int(index)
        except ValueError:
            raise ConfigError(f"--device {name!r} is invalid; write cuda:N with N an integer") from None
        if not 0 <= index < count:
            raise ConfigError(f"--device {name} does not exist; this machine has {count} GPU(s): cuda:0..cuda:{count - 1}")
        return torch.device("cuda", index)
    raise ConfigError(f"--device {name!r} is invalid; valid: auto, cpu, cuda, cuda:N, mps")


def check_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of fp32 | bf16 | fp16 (None for fp32); fp16 needs a GPU."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r} is invalid; valid: {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("--precision fp16 needs a GPU (CPU autocast supports bf16); use --precision bf16 or fp32 on the CPU")
    return PRECISIONS[precision]


def autocast(device: torch.device, precision: str):
    """The context in which the network's forward runs at `precision` (a no-op for fp32)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str):
    """A loss scaler for fp16 (its small exponent range underflows gradients), else None."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def compiled(network: nn.Module, enabled: bool) -> nn.Module:
    """`torch.compile(network)` when enabled; the original module's weights are shared (checkpoints save those)."""
    if not enabled:
        return network
    try:
        return torch.compile(network)
    except Exception as error:  # noqa: BLE001 - any backend failure becomes one line
        raise ConfigError(f"--compile: torch.compile is unavailable here ({type(error).__name__}: {' '.join(str(error).split())[:160]})") from None


def compile_error(error: Exception) -> ConfigError:
    """The one-line error for a compiler backend that failed at the first compiled call."""
    return ConfigError(f"--compile: no working compiler backend on this machine ({type(error).__name__}: {' '.join(str(error).split())[:160]}); run without --compile")


def peak_memory_mib(device: torch.device) -> Optional[float]:
    """Peak GPU memory allocated by this process in MiB (CUDA only), else None."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def make_optimizer(net: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam with one fused kernel over all weights where the device has it, else the multi-tensor (foreach) path.

    Same update rule either way; the fused step saves about a tenth of a small MLP's step time on CPU
    (benchmarks/speed.py).
    """
    try:
        return torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, foreach=True)
