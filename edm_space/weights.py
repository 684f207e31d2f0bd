"""Weights runs: a trained denoiser as safetensors plus a JSON config, loaded without executing code.

    edm-space export RUN --format safetensors --out DIR     # DIR/config.json + DIR/weights.safetensors
    edm-space import edm-space DIR --out RUN2                # checked, then copied into a run directory

A weights run is a directory with

- config.json: the run's TrainConfig (the same file a training run has),
- record.json: what the run derived (edm_space.run_record; weights runs written before it keep it in config.json), and
- weights.safetensors: the network's tensors (safetensors has no code in it, so loading runs none),
  with string metadata: format, version, step, which weights ("ema", "raw" or "imported") and source.

`edm_space.training.load_trained` (and so every command) reads a weights run as it reads a training run;
it rebuilds the network from the config and loads the tensors strictly, so the denoiser is the same bit
for bit. A latent run keeps its record of the autoencoder run it decodes with (not a copy of it).
This module is the file format; edm_space.interop.own_format exports and imports such runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch

from .errors import ConfigError
from .files import read_json, write_atomic
from .optional import require

WEIGHTS_NAME = "weights.safetensors"
CONFIG_NAME = "config.json"
RECORD_NAME = "record.json"  # edm_space.run_record.RECORD_NAME
WEIGHTS_FORMAT = "edm-space-weights"
WEIGHTS_VERSION = "1"
WEIGHT_KINDS = ("ema", "raw", "imported")


def is_weights_run(path: str) -> bool:
    """Whether `path` is a directory holding config.json and weights.safetensors."""
    return os.path.isfile(os.path.join(path, WEIGHTS_NAME)) and os.path.isfile(os.path.join(path, CONFIG_NAME))


def safetensors_bytes(tensors: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> bytes:
    """The safetensors serialization of `tensors` (CPU, contiguous, unshared copies) with string `metadata`."""
    st = require("safetensors.torch", "writing safetensors")
    plain = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in tensors.items()}
    return st.save(plain, metadata=metadata)


def read_safetensors(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """(tensors, metadata) of a safetensors file, or a one-line ConfigError for a file that is not one."""
    st = require("safetensors.torch", "reading safetensors")
    try:
        with open(path, "rb") as file:
            data = file.read()
        tensors = dict(sorted(st.load(data).items()))  # safetensors returns its tensors in no fixed order
        header_size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8:8 + header_size]).get("__metadata__") or {}
    except FileNotFoundError:
        raise ConfigError(f"weights file {path!r} does not exist") from None
    except Exception as error:  # a truncated or foreign file: refused, never interpreted
        reason = " ".join(str(error).split())[:160]
        raise ConfigError(f"{path!r} is not a readable safetensors file ({type(error).__name__}: {reason})") from None
    return tensors, metadata


def check_new_directory(out_dir: str) -> None:
    """Refuse an --out that exists, unless it is an empty directory, or one below a file."""
    if os.path.exists(out_dir) and not (os.path.isdir(out_dir) and not os.listdir(out_dir)):
        raise ConfigError(f"--out {out_dir!r} already exists; give a new directory")
    folder = os.path.dirname(os.path.abspath(out_dir))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ConfigError(f"--out {out_dir!r}: {folder!r} is a file, not a directory")


@contextlib.contextmanager
def staged_directory(out_dir: str) -> Iterator[str]:
    """A temporary folder beside the new directory `out_dir` (missing parents are made), renamed to it when the block
    succeeds; when it fails, the folder and the parents this call made are removed. The directory appears whole or
    not at all, and nothing that existed is replaced."""
    check_new_directory(out_dir)
    parent = os.path.dirname(os.path.abspath(out_dir))
    top = parent
    while not os.path.exists(os.path.dirname(top)):
        top = os.path.dirname(top)
    made = None if os.path.isdir(parent) else top
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        yield staging
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty, checked above
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(made or staging, ignore_errors=True)
        raise


def write_weights_run(out_dir: str, config: Dict[str, Any], tensors: Dict[str, torch.Tensor], metadata: Dict[str, str],
                      extra: Optional[Callable[[str], None]] = None, record: Optional[Dict[str, Any]] = None) -> None:
    """Create the weights run `out_dir` (config.json, the `record` as record.json, the tensors) whole or not at all
    (staged_directory); `extra(folder)` may add more files."""
    check_new_directory(out_dir)
    payload = safetensors_bytes(tensors, {"format": WEIGHTS_FORMAT, "version": WEIGHTS_VERSION, **metadata})
    with staged_directory(out_dir) as staging:
        write_atomic(os.path.join(staging, WEIGHTS_NAME), payload)
        if record is not None:
            write_atomic(os.path.join(staging, RECORD_NAME), (json.dumps(record, indent=2) + "\n").encode())
        write_atomic(os.path.join(staging, CONFIG_NAME), (json.dumps(config, indent=2) + "\n").encode())
        if extra is not None:
            extra(staging)


def read_weights_run(run_dir: str) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor], Dict[str, str]]:
    """(config payload, tensors, metadata) of a weights run; a foreign file is refused in one line."""
    if not os.path.isdir(run_dir):
        raise ConfigError(f"{run_dir!r} does not exist or is not a directory")
    if not is_weights_run(run_dir):
        raise ConfigError(f"{run_dir!r} is not an edm-space weights directory (it needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    tensors, metadata = read_safetensors(os.path.join(run_dir, WEIGHTS_NAME))
    if metadata.get("format") != WEIGHTS_FORMAT:
        raise ConfigError(f"{os.path.join(run_dir, WEIGHTS_NAME)!r} is not an edm-space weights file (no {WEIGHTS_FORMAT!r} marker)")
    if metadata.get("version") != WEIGHTS_VERSION:
        raise ConfigError(f"{run_dir!r} has weights version {metadata.get('version')!r}; this edm-space reads version {WEIGHTS_VERSION}")
    return read_json(os.path.join(run_dir, CONFIG_NAME), "run config"), tensors, metadata
