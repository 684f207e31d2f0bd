"""Run directories: a lock, checkpoints written atomically and loaded without executing code, leftovers cleaned.

A run directory (of diffusion training, an autoencoder or another generative family) holds
config.json (the options given), record.json (what the run derived; edm_space.run_record),
checkpoints/checkpoint-STEP.pt and log.jsonl. One process at a time may train
in it: `RunLock` holds the file `lock` (the owner's pid and host) for the run's lifetime; a
lock whose process is gone is taken over. Temporary files that a killed process left behind
are removed when the next one takes the lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import math
import os
import re
import shutil
import socket
import zipfile
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from .errors import ConfigError
from .files import process_alive as _process_alive
from .files import read_json, write_atomic
from .posthoc_ema import remove_snapshots_after

CHECKPOINT_FORMAT = "edm-space-checkpoint"
CHECKPOINT_VERSION = 1
LOCK_NAME = "lock"
# Sizes past which a setting is a typo, refused before anything is allocated.
MAX_STEPS = 10**9
MAX_BATCH = 10**7
# Settings a resumed run may change.
RESUMABLE = ("steps", "checkpoint_every", "log_every", "keep_checkpoints")
_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)\.pt")
# Temporary files of write_atomic (.tmp-*) and of earlier versions' checkpoint writer (*.tmp-PID).
_TEMPORARY_NAME = re.compile(r"(\.tmp-.*|.*\.tmp-\d+)")


# ---------------------------------------------------------------------------
# The lock.


class RunLock:
    """An exclusive lock on a run directory, as a context manager; refuses a directory in use.

    The lock file holds "PID HOST". Another live process on this host holding it means the
    directory is in use (one-line ConfigError); a lock of a dead process, or an unreadable one,
    is taken over. A lock from another host is respected, since its process cannot be checked.
    """

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.held = False

    def acquire(self) -> None:
        me = f"{os.getpid()} {socket.gethostname()}"
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:  # vanished or unreadable between our attempts: try again
                    self._remove_stale()
                    continue
                pid, host = owner
                if host in ("", socket.gethostname()) and not _process_alive(pid):  # no host written: this one
                    self._remove_stale()
                    continue
                raise ConfigError(
                    f"run directory {self.run_dir!r} is in use by process {pid} on {host} (lock file {self.path}); "
                    "wait for it to finish or use another --out"
                ) from None
            with os.fdopen(fd, "w") as file:
                file.write(me + "\n")
            self.held = True
            return
        raise ConfigError(f"could not take the lock {self.path!r} of run directory {self.run_dir!r}; another process keeps replacing it")

    def _owner(self) -> Optional[Tuple[int, str]]:
        try:
            with open(self.path) as file:
                pid_text, host = (file.read().split() + ["", ""])[:2]
            return int(pid_text), host
        except (OSError, ValueError):
            return None

    def _remove_stale(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        if self.held:
            self._remove_stale()
            self.held = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def training_run(run_dir: str, owner: bool = True) -> Iterator[None]:
    """The run directory held for one training call: created if needed, locked, left-over temporaries removed.

    If the block fails, a run directory this call created and that holds no checkpoint yet is removed
    (nothing is left that would block the corrected command); otherwise log.jsonl is trimmed to the
    newest checkpoint. Under torch.distributed only the owner (rank 0) creates, locks and cleans.
    """
    if not owner:
        yield
        return
    created = prepare_run_dir(run_dir)
    lock = RunLock(run_dir)
    try:
        lock.acquire()
    except BaseException:
        if created:
            shutil.rmtree(created, ignore_errors=True)
        raise
    try:
        remove_temporaries(run_dir)
        yield
    except BaseException:
        found = list_checkpoints(run_dir)
        if created and not found:
            lock.release()
            shutil.rmtree(created, ignore_errors=True)
        elif os.path.isdir(run_dir):
            try:  # the log keeps no step that the checkpoints do not hold (a failed write may have been a full disk)
                trim_log(run_dir, found[-1][0] if found else 0)
                remove_snapshots_after(run_dir, found[-1][0] if found else 0)  # nor do the post-hoc EMA snapshots
            except OSError:
                pass
        raise
    finally:
        lock.release()


def remove_temporaries(run_dir: str) -> List[str]:
    """Delete temporary files a killed writer left in the run directory and its checkpoints/; returns them."""
    removed = []
    for folder in (run_dir, checkpoint_dir(run_dir)):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if _TEMPORARY_NAME.fullmatch(name) and os.path.isfile(path):
                os.unlink(path)
                removed.append(path)
    return removed


def prepare_run_dir(run_dir: str) -> Optional[str]:
    """Create the run directory and its parents if needed (one-line errors for impossible paths).

    Returns the top-most folder this call created (to remove if the run fails before its first
    checkpoint), or None when the run directory existed.
    """
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ConfigError(f"--out {run_dir!r} is a file, not a run directory")
    if os.path.isdir(run_dir):
        return None
    top = os.path.abspath(run_dir)
    while not os.path.exists(os.path.dirname(top)):
        top = os.path.dirname(top)
    try:
        os.makedirs(run_dir)
    except (NotADirectoryError, FileExistsError):
        raise ConfigError(f"cannot create run directory {run_dir!r}: a part of its path is a file") from None
    except OSError as error:
        raise ConfigError(f"cannot create run directory {run_dir!r}: {error.strerror}") from None
    return top


# ---------------------------------------------------------------------------
# Checkpoints.


def checkpoint_dir(run_dir: str) -> str:
    """The folder of a run's checkpoints."""
    return os.path.join(run_dir, "checkpoints")


def checkpoint_path(run_dir: str, step: int) -> str:
    """Where the checkpoint of `step` lives."""
    return os.path.join(checkpoint_dir(run_dir), f"checkpoint-{step:08d}.pt")


def list_checkpoints(run_dir: str) -> List[Tuple[int, str]]:
    """(step, path) of the run's checkpoints, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        match = _CHECKPOINT_NAME.fullmatch(name)
        if match:
            found.append((int(match.group(1)), os.path.join(folder, name)))
    return sorted(found)


def save_checkpoint(path: str, state: Dict[str, Any]) -> None:
    """torch.save through edm_space.files.write_atomic: never a half-written checkpoint."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getvalue())


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Load a checkpoint without executing code (weights_only=True) and check it is ours."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()  # torch.load does not check the CRCs torch.save writes
        if damaged is not None:
            raise ConfigError(f"{path!r} is corrupt: the CRC of its record {damaged!r} does not match")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except ConfigError:
        raise
    except FileNotFoundError:
        raise ConfigError(f"checkpoint {path!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"checkpoint {path!r} is a directory, not a checkpoint file") from None
    except Exception as error:  # truncated zip, foreign pickle, ...: never executed, always refused
        reason = " ".join(str(error).split())[:160]
        raise ConfigError(f"{path!r} is not a readable edm-space checkpoint ({type(error).__name__}: {reason})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path!r} is not an edm-space checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(f"{path!r} has checkpoint version {state.get('version')!r}; this edm-space reads version {CHECKPOINT_VERSION}")
    return state


def latest_checkpoint(run_dir: str) -> Optional[Tuple[int, Dict[str, Any]]]:
    """(step, state) of the newest checkpoint of the run, or None."""
    found = list_checkpoints(run_dir)
    if not found:
        return None
    step, path = found[-1]
    return step, load_checkpoint(path)


def find_checkpoint(source: str, step: Optional[int] = None) -> Tuple[str, int, str]:
    """(run_dir, step, path) of a run's checkpoint: `source` is a run directory (newest, or `step`) or a checkpoint file."""
    if os.path.isfile(source):
        match = _CHECKPOINT_NAME.fullmatch(os.path.basename(source))
        folder = os.path.dirname(os.path.abspath(source))
        if match is None or os.path.basename(folder) != "checkpoints":
            raise ConfigError(f"--ckpt {source!r} is neither a run directory nor a RUN/checkpoints/checkpoint-STEP.pt file")
        if step is not None and step != int(match.group(1)):
            raise ConfigError(f"--step {step} contradicts the checkpoint file {source!r}")
        return os.path.dirname(folder), int(match.group(1)), source
    if not os.path.isdir(source):
        raise ConfigError(f"--ckpt {source!r} does not exist")
    if not os.path.isfile(os.path.join(source, "config.json")):
        raise ConfigError(f"{source!r} is not a run directory (no config.json)")
    found = list_checkpoints(source)
    if not found:
        raise ConfigError(f"run directory {source!r} has no checkpoint yet")
    if step is None:
        return (source, *found[-1])
    for candidate, path in found:
        if candidate == step:
            return source, step, path
    raise ConfigError(f"run directory {source!r} has no checkpoint of step {step}; it has steps {', '.join(str(s) for s, _ in found)}")


def write_json(path: str, payload: Dict[str, Any]) -> None:
    """A JSON object to `path`, atomically."""
    write_atomic(path, (json.dumps(payload, indent=2) + "\n").encode())


def config_from_json(cls: type, payload: Dict[str, Any]):
    """The run-config dataclass `cls` from a config.json payload; fields it does not know are refused with one line."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown_keys = sorted(set(payload) - known)
    if unknown_keys:
        raise ConfigError(f"config.json has unknown fields {unknown_keys}; was it written by another tool?")
    return cls(**payload)


def run_kind(payload: Dict[str, Any]) -> str:
    """The kind of run a config.json payload describes: "diffusion" (no field "kind"), "family" or "autoencoder"."""
    return str(payload.get("kind", "diffusion"))


def _run_commands(kind: str, payload: Dict[str, Any], run_dir: str) -> Tuple[str, str]:
    """(what the run is, the commands that continue and use it) for a run of `kind`."""
    name = payload.get("name", "?")
    if kind == "family":
        return f"a {name} family run", f"resume it with `edm-space train --family {name} --out {run_dir}`, sample it with `edm-space sample --ckpt {run_dir}`"
    if kind == "autoencoder":
        return (f"a {name} autoencoder run", f"resume it with `edm-space autoencoder train --kind {name} --out {run_dir}`, "
                f"use it with `edm-space autoencoder eval --ckpt {run_dir}` or `edm-space train --latent {run_dir}`")
    return f"a diffusion run ({payload.get('preset', '?')!r})", f"resume it with `edm-space train --out {run_dir}`, sample it with `edm-space sample --ckpt {run_dir}`"


def read_run_payload(run_dir: str, wanted: Tuple[str, ...], use: str) -> Dict[str, Any]:
    """The config.json of a run directory if its run is of a kind in `wanted`; otherwise one line saying what kind of
    run it is and which commands take it (`use` says what was asked for, e.g. "optimize-steps needs a diffusion run")."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{run_dir!r} is not a run directory (no config.json)")
    payload = read_json(path, "run config")
    if not isinstance(payload, dict):
        raise ConfigError(f"{path!r} does not hold a run configuration (a JSON object)")
    kind = run_kind(payload)
    if kind not in wanted:
        what, commands = _run_commands(kind, payload, run_dir)
        raise ConfigError(f"run directory {run_dir!r} holds {what}; {use}: {commands}")
    return payload


def disk_error(error: OSError, what: str) -> ConfigError:
    """A one-line ConfigError for an OSError while writing `what` (full disk, read-only, missing folder)."""
    reason = "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
    target = f" {error.filename!r}" if getattr(error, "filename", None) else ""
    return ConfigError(f"could not write {what}{target}: {reason}")


# ---------------------------------------------------------------------------
# Checkpoints that hold good weights, and a log that matches them.


class TrainingDiverged(ConfigError):
    """The loss or the gradient became NaN or infinite."""


# Markers of checkpoints another run depends on (a latent run on its autoencoder's): checkpoints/pinned/STEP-ID.
PINNED = "pinned"


def pin_checkpoint(run_dir: str, step: int, by: str) -> None:
    """Keep checkpoint `step` of `run_dir` from ever being pruned, for the run `by` (a marker file naming it)."""
    folder = os.path.join(checkpoint_dir(run_dir), PINNED)
    os.makedirs(folder, exist_ok=True)
    by = os.path.abspath(by)
    with open(os.path.join(folder, f"{step}-{hashlib.sha256(by.encode()).hexdigest()[:12]}"), "w") as file:
        file.write(by + "\n")


def pinned_steps(run_dir: str) -> List[int]:
    """The steps of the checkpoints other runs have pinned; a pin whose run directory is gone holds nothing."""
    folder = os.path.join(checkpoint_dir(run_dir), PINNED)
    steps = set()
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        try:
            with open(os.path.join(folder, name)) as file:
                owner = file.read().strip()
        except OSError:
            continue
        if re.fullmatch(r"\d+-[0-9a-f]+", name) and os.path.isdir(owner):
            steps.add(int(name.split("-")[0]))
    return sorted(steps)


def confirm_checkpoint(run_dir: str, good: Tuple[int, str], keep: int, rank: int) -> None:
    """`good` is confirmed: prune older checkpoints so that `keep` remain, `good` among them (pinned ones are never pruned)."""
    if rank != 0:
        return
    pinned = set(pinned_steps(run_dir))
    older = [path for step, path in list_checkpoints(run_dir) if step < good[0] and step not in pinned]
    for path in older[: max(len(older) - (keep - 1), 0)]:
        os.unlink(path)


def diverged_error(run_dir: str, what: str, pending: Optional[Tuple[int, str]], step: int, rank: int) -> TrainingDiverged:
    """The error for a non-finite loss or gradient; the checkpoint holding the weights that produced it is set aside."""
    if rank == 0 and pending is not None and pending[0] == step:
        # Its weights gave this very loss: keep it for inspection, but never resume from it.
        os.replace(pending[1], os.path.join(checkpoint_dir(run_dir), f"diverged-{os.path.basename(pending[1])}"))
    found = list_checkpoints(run_dir)
    where = f"; the last good checkpoint is {found[-1][1]}" if found else "; no checkpoint was written yet"
    return TrainingDiverged(what + where)


def trim_log(run_dir: str, step: int) -> None:
    """Drop log.jsonl entries past `step` (and a line cut off by a crash), so the log matches the checkpoints."""
    log_path = os.path.join(run_dir, "log.jsonl")
    if not os.path.exists(log_path):
        return
    with open(log_path) as file:
        lines = file.readlines()
    kept = [line.rstrip("\n") + "\n" for line in lines if line.strip() and _logged_step(line) <= step]
    if kept != lines:
        write_atomic(log_path, "".join(kept).encode())


def _logged_step(line: str) -> float:
    """The step of one log.jsonl line; a line cut off by a crash counts as past every step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf
