"""The run engine: the one training loop every kind of model runs through.

What is trained plugs in as a task (`Task`): diffusion (edm_space.training), each generative
family and each autoencoder (edm_space.model_training). The engine owns what they share:

- the cadence: one step at a time from the resumed step, a log.jsonl entry every `log_every`
  steps (the mean of each named value over the window, throughput, peak GPU memory) and a
  checkpoint every `checkpoint_every` steps and at the end;
- the good-checkpoint rule: a checkpoint counts as good once the weights it holds give a finite
  loss on the next step's batch (`confirm_checkpoint` then prunes older ones); the last one is
  checked on the batch of step `steps` when the loop ends;
- divergence: a non-finite value handed to the step's `check` ends the run with one line naming
  the step and the last good checkpoint, the checkpoint of those weights set aside (TrainingDiverged);
- the checkpoint file: the task's named state_dicts with the format marker, version, step, the
  run's config and its record, written atomically, then record.json and config.json (`write_checkpoint`);
- progress (a tqdm bar on rank 0) and, under torch.distributed, one writer (rank 0) and a barrier
  after each checkpoint.

The run directory itself (lock, leftovers, atomic files, loading without executing code) is
edm_space.rundir's; a task's randomness comes from edm_space.seeding.step_generator(seed, step),
so a resumed run continues bit-exactly from the step counter alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Protocol, Tuple

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from . import devices
from .errors import ConfigError
from .run_record import RunRecord, write_record
from .rundir import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    checkpoint_dir,
    checkpoint_path,
    confirm_checkpoint,
    diverged_error,
    find_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    trim_log,
    write_json,
)

__all__ = ["Task", "Cadence", "Check", "run_steps", "write_checkpoint", "open_checkpoint", "differing", "resolve_run_config",
           "newest_checkpoint"]

# check(what, value): raise TrainingDiverged ("WHAT became VALUE at step S; the last good checkpoint is ...")
# when `value` is not finite.
Check = Callable[[str, float], None]


class Task(Protocol):
    """What the engine trains: built by its module from the run's options, driven one step at a time."""

    config: Any  # the run's config dataclass (to_json()), stored in each checkpoint and as config.json
    record: Optional[RunRecord]  # what the run derived (edm_space.run_record), stored in each checkpoint and as record.json

    def train_step(self, step: int, check: Check) -> Dict[str, float]:
        """One optimization step on step `step`'s batch, every draw from step_generator(seed, step); hands each
        loss (and gradient norm) to `check` before the weights change. Returns the named values to log."""

    def final_check(self, step: int, check: Check) -> None:
        """The loss of the current weights on step `step`'s batch, handed to `check`; the weights are not kept changed."""

    def log_fields(self, done: int, means: Dict[str, float]) -> Dict[str, Any]:
        """The task's fields of the log entry after `done` steps, from the window's means of train_step's values."""

    def images_seen(self, done: int) -> int:
        """Training images seen after `done` steps."""

    def checkpoint_states(self) -> Dict[str, Any]:
        """The named state_dicts (and other tensors) a checkpoint stores, e.g. model, ema, optimizer."""


@dataclass(frozen=True)
class Cadence:
    """How far a run goes and how often it logs and checkpoints."""

    steps: int
    log_every: int
    checkpoint_every: int
    keep_checkpoints: int
    batch: int


def resolve_run_config(cls: type, read: Callable[[str], Any], out: str, given: Dict[str, Any], explicit: Iterable[str]):
    """The config (`cls`) to train with: `given` for a new run; when `out` holds a run (its config read by `read`),
    its stored settings for every key not in `explicit` (the settings the user actually gave)."""
    settings = dict(given)
    if os.path.isfile(os.path.join(out, "config.json")):
        stored = read(out).to_json()
        explicit = set(explicit)
        for key in settings:
            if key not in explicit and key in stored:
                settings[key] = stored[key]
    return cls(out=out, **settings)


def newest_checkpoint(run_dir: str, steps: int) -> Tuple[int, Optional[Dict[str, Any]]]:
    """(step, state) of the run's newest checkpoint, or (0, None) for a new run; refuses `steps` below it."""
    found = list_checkpoints(run_dir)
    start_step, state = (found[-1][0], load_checkpoint(found[-1][1])) if found else (0, None)
    if steps < start_step:
        raise ConfigError(f"run directory {run_dir!r} is at step {start_step}; --steps {steps} is below it (give --steps >= {start_step})")
    return start_step, state


def open_checkpoint(source: str, step: Optional[int], read_config: Callable[[str], Any],
                    unreadable: str) -> Tuple[str, int, str, Any, Dict[str, Any], Dict[str, Any]]:
    """(run_dir, step, path, the run's config, the checkpoint's state, the config stored in the checkpoint) of a run
    directory (its newest checkpoint, or that of `step`) or a checkpoint file; read without executing code.
    A stored config that is not a JSON object is refused as "checkpoint PATH `unreadable`"."""
    run_dir, step, path = find_checkpoint(source, step)
    config = read_config(run_dir)
    state = load_checkpoint(path)
    try:
        stored = json.loads(state.get("config", "{}"))
    except (TypeError, ValueError):
        stored = None
    if not isinstance(stored, dict):
        raise ConfigError(f"checkpoint {path!r} {unreadable}")
    return run_dir, step, path, config, state, stored


def differing(run: Dict[str, Any], stored: Dict[str, Any]) -> List[str]:
    """The keys whose value the run's config.json sets (not None) and the checkpoint's stored config contradicts."""
    return [key for key, value in run.items() if value is not None and stored.get(key) != value]


def write_checkpoint(run_dir: str, step: int, states: Dict[str, Any], config: Any, record: Optional[RunRecord] = None) -> str:
    """The checkpoint of `step` (the format marker, version, step, `states`, the config and the record, with this step
    and checkpoint, as JSON text), then record.json and config.json (the run's settings, steps included), each
    atomically. Returns the checkpoint's path."""
    path = checkpoint_path(run_dir, step)
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": step, **states,
             "config": json.dumps(config.to_json())}
    if record is not None:
        record = dataclasses.replace(record, step=step, checkpoint=os.path.relpath(path, run_dir))
        state["record"] = json.dumps(record.to_json())
    os.makedirs(checkpoint_dir(run_dir), exist_ok=True)
    save_checkpoint(path, state)
    if record is not None:  # before config.json: a run whose config.json is written has its record
        write_record(run_dir, record)
    write_json(os.path.join(run_dir, "config.json"), config.to_json())
    return path


class _Window:
    """The values logged since the last log entry: sums of each named value, steps, and the start time."""

    def __init__(self) -> None:
        self.sums: Dict[str, float] = {}
        self.steps, self.start = 0, time.perf_counter()

    def add(self, values: Dict[str, float]) -> None:
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.steps += 1

    def means(self) -> Dict[str, float]:
        return {name: total / self.steps for name, total in self.sums.items()}


def run_steps(run_dir: str, task: Task, start_step: int, cadence: Cadence, device: torch.device, rank: int = 0,
              world: int = 1, progress: bool = True, desc: str = "train",
              logged: Optional[Callable[[Dict[str, Any]], None]] = None) -> None:
    """Train `task` from `start_step` to cadence.steps in `run_dir`, logging and checkpointing on the cadence.

    `logged(entry)` is called on rank 0 after each log entry is written (e.g. to mirror it to TensorBoard).
    """
    if rank == 0:
        trim_log(run_dir, start_step)  # a crashed run may have logged steps past its last checkpoint; they are redone
    log_path = os.path.join(run_dir, "log.jsonl")
    bar = tqdm(total=cadence.steps, initial=start_step, desc=desc, unit="step", dynamic_ncols=True) if progress and rank == 0 else None
    # The newest checkpoint written by this call whose weights have not yet given a finite loss.
    pending: Optional[Tuple[int, str]] = None

    def checker(step: int) -> Check:
        def check(what: str, value: float) -> None:
            if not math.isfinite(value):
                raise diverged_error(run_dir, f"{what} became {value} at step {step}", pending, step, rank)
        return check

    window = _Window()
    try:
        for step in range(start_step, cadence.steps):
            values = task.train_step(step, checker(step))
            if pending is not None and pending[0] == step:
                confirm_checkpoint(run_dir, pending, cadence.keep_checkpoints, rank)
                pending = None
            window.add(values)
            done = step + 1
            if bar is not None:
                bar.update(1)
            if done % cadence.log_every == 0 or done == cadence.steps:
                entry = _log_entry(task, done, window, cadence.batch, device)
                if bar is not None:
                    bar.set_postfix({name: f"{value:.4g}" for name, value in window.means().items()})
                if rank == 0:
                    with open(log_path, "a") as file:
                        file.write(json.dumps(entry) + "\n")
                    if logged is not None:
                        logged(entry)
                window = _Window()
            if done % cadence.checkpoint_every == 0 or done == cadence.steps:
                if rank == 0:
                    pending = (done, write_checkpoint(run_dir, done, task.checkpoint_states(), task.config, getattr(task, "record", None)))
                if world > 1:
                    dist.barrier()
        if start_step < cadence.steps:
            # The last checkpoint has no next training step in this call: check its weights on that step's batch now.
            task.final_check(cadence.steps, checker(cadence.steps))
            if pending is not None:
                confirm_checkpoint(run_dir, pending, cadence.keep_checkpoints, rank)
    finally:
        if bar is not None:
            bar.close()


def _log_entry(task: Task, done: int, window: _Window, batch: int, device: torch.device) -> Dict[str, Any]:
    """One log.jsonl entry: step, images, the task's fields, throughput over the window, peak GPU memory."""
    elapsed = time.perf_counter() - window.start
    return {
        "step": done,
        "images": task.images_seen(done),
        **task.log_fields(done, window.means()),
        "images_per_s": window.steps * batch / max(elapsed, 1e-9),
        **({"peak_gpu_memory_mib": devices.peak_memory_mib(device)} if device.type == "cuda" else {}),
    }
