"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models",
Sec. 3 and Appendix C): choose the EMA length after training.

During training, `PowerEMA` tracks a few power-function EMA profiles of the network's weights
(relative standard deviations 0.05 and 0.10 by default) and the training loop stores their
snapshots every K images in RUN/ema-snapshots/snapshot-STEP.safetensors (written atomically;
safetensors files hold tensors only, so reading one never executes code). Afterwards,
`reconstruct` builds the EMA of any relative std at any snapshotted step as the least-squares
combination of the stored snapshots, solved in float64.

A power-function profile of exponent gamma averages the weights seen up to time t with density
proportional to tau^gamma (EDM2 eq. 2); its relative standard deviation (the std of tau/t under
that density) is sqrt((gamma+1) / ((gamma+2)^2 (gamma+3))) (EDM2 eq. 3).
"""

from __future__ import annotations

import json
import os
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .errors import ConfigError
from .files import write_atomic

DEFAULT_STDS = (0.05, 0.10)
SNAPSHOT_DIR = "ema-snapshots"
SNAPSHOT_FORMAT = "edm-space-ema-snapshot"
_SNAPSHOT_NAME = re.compile(r"snapshot-(\d+)\.safetensors")
# Relative stds a power function can have: gamma > 0 gives std < sqrt(1/12) (a uniform average).
MAX_STD = (1 / 12) ** 0.5


# ---------------------------------------------------------------------------
# The power-function profile in closed form.


def gamma_to_std(gamma: float) -> float:
    """Relative std of the power-function profile of exponent `gamma` (EDM2 eq. 3)."""
    gamma = float(gamma)
    return ((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))) ** 0.5


def std_to_gamma(std: float) -> float:
    """The exponent gamma whose profile has relative std `std` (EDM2 eq. 3 inverted, App. C.3 Algorithm 2).

    std^-2 (gamma + 1) = (gamma + 2)^2 (gamma + 3) is a cubic in gamma,
    gamma^3 + 7 gamma^2 + (16 - std^-2) gamma + (12 - std^-2) = 0; its largest real root is the answer.
    """
    check_std(std)
    inverse = float(std) ** -2
    roots = np.roots([1.0, 7.0, 16.0 - inverse, 12.0 - inverse])
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


def check_std(std: float, option: str = "std") -> float:
    """`std` as a float, or a one-line ConfigError when no power-function profile has it."""
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not 0 < std < MAX_STD:
        raise ConfigError(f"{option} {std!r} is invalid; a relative EMA std must be a number in (0, {MAX_STD:.4f})")
    return float(std)


def power_beta(gamma: float, images: float, batch: float) -> float:
    """Per-step decay of a power-function EMA at `images` seen after a step of `batch` images:
    (1 - batch/images)^(gamma + 1) (EDM2 eq. 127); with batch = 1 image per unit time, (1 - 1/t)^(gamma+1)."""
    return (1.0 - batch / images) ** (gamma + 1.0)


def profile_inner_products(t_a: np.ndarray, gamma_a: np.ndarray, t_b: np.ndarray, gamma_b: np.ndarray) -> np.ndarray:
    """<p_a, p_b> = integral of p_a(tau) p_b(tau) dtau for power-function profiles
    p(tau) = (gamma+1) tau^gamma / t^(gamma+1) on [0, t] (EDM2 App. C.3, eq. 151), elementwise in float64."""
    t_a, gamma_a, t_b, gamma_b = (np.asarray(v, dtype=np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    short, long = np.minimum(t_a, t_b), np.maximum(t_a, t_b)
    gamma_long = np.where(t_a < t_b, gamma_b, gamma_a)  # the longer profile's exponent
    # integral over [0, short] of (ga+1)(gb+1) tau^(ga+gb) / (t_a^(ga+1) t_b^(gb+1))
    return (gamma_a + 1) * (gamma_b + 1) / (gamma_a + gamma_b + 1) * (short / long) ** gamma_long / long


def solve_coefficients(in_t: Sequence[float], in_std: Sequence[float], out_t: float, out_std: float) -> np.ndarray:
    """Weights x of the stored profiles (times in_t, stds in_std) whose combination sum_i x_i p_i is the
    least-squares fit to the profile (out_t, out_std) (EDM2 App. C.3, Algorithm 3), solved in float64
    and scaled to sum to 1 (an average of weights)."""
    in_t, in_gamma = np.asarray(in_t, np.float64), np.array([std_to_gamma(s) for s in in_std], np.float64)
    gram = profile_inner_products(in_t[:, None], in_gamma[:, None], in_t[None, :], in_gamma[None, :])
    target = profile_inner_products(in_t, in_gamma, np.float64(out_t), np.float64(std_to_gamma(out_std)))
    coefficients = np.linalg.lstsq(gram, target, rcond=None)[0]
    return coefficients / coefficients.sum()


# ---------------------------------------------------------------------------
# Tracking profiles during training.


class PowerEMA:
    """Power-function EMAs of a network's parameters, one per relative std; float32 copies on its device.

    update(images, batch) after each optimizer step; state_dict()/load_state_dict() go into checkpoints.
    """

    def __init__(self, net: nn.Module, stds: Iterable[float] = DEFAULT_STDS):
        self.net = net
        self.stds = [check_std(s, "ema std") for s in stds]
        self.gammas = [std_to_gamma(s) for s in self.stds]
        self.names = [name for name, _ in net.named_parameters()]
        self.sources = [p.detach() for p in net.parameters()]
        self.profiles = [[p.detach().clone() for p in net.parameters()] for _ in self.stds]

    @torch.no_grad()
    def update(self, images: float, batch: float) -> None:
        """Fold in the network's current weights: profile <- net + beta (profile - net), beta of EDM2 eq. 127."""
        for gamma, tensors in zip(self.gammas, self.profiles):
            torch._foreach_lerp_(tensors, self.sources, 1.0 - power_beta(gamma, images, batch))

    def state_dict(self) -> Dict[str, object]:
        """The profiles, for a checkpoint (a dict of plain lists and tensors: loads with weights_only)."""
        return {"stds": list(self.stds), "names": list(self.names), "profiles": [list(t) for t in self.profiles]}

    @torch.no_grad()
    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Restore the profiles of a checkpoint; its stds and parameter names must be this tracker's."""
        if list(state.get("stds", [])) != self.stds or list(state.get("names", [])) != self.names:
            raise ConfigError(f"the checkpoint tracks EMA profiles {state.get('stds')} of other parameters than this run's {self.stds}")
        for tensors, stored in zip(self.profiles, state["profiles"]):
            torch._foreach_copy_(tensors, [t.to(tensors[0].device) for t in stored])

    def snapshot_tensors(self) -> Dict[str, torch.Tensor]:
        """Every profile's parameters and the network's buffers, keyed for a snapshot file (CPU copies)."""
        tensors = {}
        for index, profile in enumerate(self.profiles):
            for name, tensor in zip(self.names, profile):
                tensors[f"profile{index}/{name}"] = tensor.detach().to("cpu", copy=True).contiguous()
        parameters = set(self.names)
        for name, value in self.net.state_dict().items():  # persistent buffers: what load_state_dict expects
            if name not in parameters:
                tensors[f"buffer/{name}"] = value.detach().to("cpu", copy=True).contiguous()
        return tensors


# ---------------------------------------------------------------------------
# Snapshots in the run directory.


def snapshot_due(images_before: int, images_after: int, every: int) -> bool:
    """Whether a snapshot every `every` images falls in (images_before, images_after]."""
    return images_after // every > images_before // every


def snapshot_dir(run_dir: str) -> str:
    """The folder of a run's EMA snapshots."""
    return os.path.join(run_dir, SNAPSHOT_DIR)


def write_snapshot(run_dir: str, step: int, images: int, tracker: PowerEMA) -> str:
    """RUN/ema-snapshots/snapshot-STEP.safetensors with every profile at `step`, atomically."""
    metadata = {"format": SNAPSHOT_FORMAT, "step": str(step), "images": str(images), "stds": json.dumps(tracker.stds)}
    os.makedirs(snapshot_dir(run_dir), exist_ok=True)
    path = os.path.join(snapshot_dir(run_dir), f"snapshot-{step:08d}.safetensors")
    write_atomic(path, safetensors_bytes(tracker.snapshot_tensors(), metadata=metadata))
    return path


def list_snapshots(run_dir: str) -> List[Tuple[int, str]]:
    """(step, path) of a run's EMA snapshots, oldest first."""
    folder = snapshot_dir(run_dir)
    if not os.path.isdir(folder):
        return []
    found = [(int(m.group(1)), os.path.join(folder, n)) for n in os.listdir(folder) if (m := _SNAPSHOT_NAME.fullmatch(n))]
    return sorted(found)


def remove_snapshots_after(run_dir: str, step: int) -> None:
    """Delete snapshots past `step` (written after the checkpoint a run resumes from; they are redone)."""
    for snapshot_step, path in list_snapshots(run_dir):
        if snapshot_step > step:
            os.unlink(path)


class Snapshot:
    """One snapshot file read back: its step, images, stds and profile tensors (loading executes no code)."""

    def __init__(self, path: str):
        try:
            with self._open(path) as file:
                metadata = file.metadata() or {}
            if metadata.get("format") != SNAPSHOT_FORMAT:
                raise ValueError(f"no '{SNAPSHOT_FORMAT}' marker")
            self.step, self.images = int(metadata["step"]), int(metadata["images"])
            self.stds = [float(s) for s in json.loads(metadata["stds"])]
        except Exception as error:  # noqa: BLE001 - a damaged or foreign file is refused in one line
            raise ConfigError(f"{path!r} is not a readable EMA snapshot ({type(error).__name__}: {' '.join(str(error).split())[:120]})") from None
        self.path = path

    @staticmethod
    def _open(path: str):
        return safe_open(path, framework="pt")

    def _tensors(self, prefix: str) -> Dict[str, torch.Tensor]:
        with self._open(self.path) as file:
            return {key[len(prefix):]: file.get_tensor(key) for key in file.keys() if key.startswith(prefix)}

    def profile(self, index: int) -> Dict[str, torch.Tensor]:
        """The parameters of profile `index` (by name), read from the file."""
        return self._tensors(f"profile{index}/")

    def buffers(self) -> Dict[str, torch.Tensor]:
        """The network's buffers at the snapshot."""
        return self._tensors("buffer/")


# ---------------------------------------------------------------------------
# Reconstruction.


def reconstruct(run_dir: str, stds: Sequence[float], at: Optional[int] = None,
                use_stds: Optional[Sequence[float]] = None) -> Tuple[int, Dict[float, Dict[str, torch.Tensor]], Dict[float, np.ndarray]]:
    """(step, {std: state dict}, {std: coefficients}): the EMA of each relative std in `stds` at the snapshotted
    step `at` (default: the newest), from the run's stored snapshots up to that step only.

    `use_stds` restricts the stored profiles combined (default: all); the weights are accumulated in float64.
    """
    stds = [check_std(s, "--std") for s in stds]
    found = list_snapshots(run_dir)
    if not found:
        raise ConfigError(f"run directory {run_dir!r} has no EMA snapshots ({SNAPSHOT_DIR}/); train it with --ema-stds")
    steps = [s for s, _ in found]
    at = steps[-1] if at is None else at
    if at not in steps:
        raise ConfigError(f"--at {at} is not a snapshotted step of {run_dir!r}; it has {', '.join(map(str, steps))}")
    snapshots = [Snapshot(path) for step, path in found if step <= at]
    inputs = [(snap, i) for snap in snapshots for i, s in enumerate(snap.stds) if use_stds is None or s in use_stds]
    if not inputs:
        raise ConfigError(f"no stored profile of {run_dir!r} has one of the stds {list(use_stds or [])}")
    in_t = [snap.images for snap, _ in inputs]
    in_std = [snap.stds[i] for snap, i in inputs]
    coefficients = {std: solve_coefficients(in_t, in_std, snapshots[-1].images, std) for std in stds}
    sums: Dict[float, Dict[str, torch.Tensor]] = {std: {} for std in stds}
    for row, (snap, index) in enumerate(inputs):  # one stored profile in memory at a time
        for name, tensor in snap.profile(index).items():
            for std in stds:
                term = tensor.to(torch.float64) * float(coefficients[std][row])
                sums[std][name] = sums[std][name] + term if name in sums[std] else term
    buffers = snapshots[-1].buffers()
    results = {std: {**{name: t.to(torch.float32) for name, t in sums[std].items()}, **buffers} for std in stds}
    return at, results, coefficients


# ---------------------------------------------------------------------------
# The training loop's side: one object, a few calls.


class TrainingProfiles:
    """What the training loop does for post-hoc EMA: track the run's profiles, snapshot them, checkpoint them.

    `stds` empty turns it off. Snapshots fall every `every_images` images, or with every checkpoint
    when that is None, and always at the run's last step. Resuming from `state` (a checkpoint) restores
    the profiles bit for bit and drops snapshots past the checkpoint (they are written again); a
    checkpoint without profiles continues without them.
    """

    def __init__(self, run_dir: str, net: nn.Module, stds: Sequence[float], every_images: Optional[int],
                 state: Optional[Dict[str, object]], start_step: int, write: bool):
        self.run_dir, self.every_images, self.write = run_dir, every_images, write
        # A run whose checkpoints hold no profiles (made before they existed, or without them) goes on without.
        tracked = bool(stds) and (state is None or "posthoc_ema" in state)
        self.tracker = PowerEMA(net, stds) if tracked else None
        if self.tracker is not None and state is not None:
            self.tracker.load_state_dict(state["posthoc_ema"])
        if write:
            remove_snapshots_after(run_dir, start_step)

    def after_step(self, done: int, images: int, batch: int, checkpoint_due: bool, last: bool) -> None:
        """Update the profiles after optimizer step number `done` (images seen so far); snapshot them when due."""
        if self.tracker is None:
            return
        self.tracker.update(images, batch)
        due = checkpoint_due if self.every_images is None else snapshot_due(images - batch, images, self.every_images)
        if self.write and (due or last):
            write_snapshot(self.run_dir, done, images, self.tracker)

    def checkpoint_state(self) -> Dict[str, object]:
        """Entries for the checkpoint ({} when no profile is tracked)."""
        return {} if self.tracker is None else {"posthoc_ema": self.tracker.state_dict()}


def check_settings(stds: Sequence[float], every_images: Optional[int]) -> None:
    """Refuse impossible post-hoc EMA settings of a run with one line."""
    if not isinstance(stds, (list, tuple)):
        raise ConfigError(f"ema_stds = {stds!r} is invalid; give a list of relative stds, e.g. [0.05, 0.1]")
    for std in stds:
        check_std(std, "ema std")
    if len(set(stds)) != len(stds):
        raise ConfigError(f"ema_stds = {list(stds)} is invalid; each std once")
    if every_images is not None and (isinstance(every_images, bool) or not isinstance(every_images, int) or every_images < 1):
        raise ConfigError(f"ema_snapshot_images = {every_images!r} is invalid; it must be an integer >= 1")


def ema_weights(run_dir: str, std: float, step: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """The network weights of relative EMA std `std` at snapshot `step` (default: the newest) of a run
    (a run directory or one of its checkpoint files)."""
    if os.path.isfile(run_dir):
        from .rundir import find_checkpoint  # here: rundir imports this module

        run_dir = find_checkpoint(run_dir)[0]
    return reconstruct(run_dir, [check_std(std, "--ema-std")], at=step)[1][std]
