"""`edm-space export RUN --format safetensors` and `edm-space import edm-space DIR`: weights runs (edm_space.weights)
written from a training run's checkpoint, and checked before they are copied into a run directory."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

from ..errors import ConfigError
from ..run_record import read_record, record_of_state, split_payload
from ..rundir import find_checkpoint, load_checkpoint
from ..training import TrainConfig, load_trained
from ..weights import is_weights_run, read_weights_run, write_weights_run


def export_run(run: str, out_dir: str, ema: bool = True, step: Optional[int] = None) -> Dict[str, Any]:
    """Write the weights run `out_dir` from a training run's checkpoint (newest, or `step`): EMA or raw weights."""
    if is_weights_run(run):
        raise ConfigError(f"{run!r} is already a weights directory; copy it, or import it with `edm-space import edm-space`")
    run_dir, found_step, path = find_checkpoint(run, step)
    state = load_checkpoint(path)
    try:
        stored = json.loads(state.get("config", "{}"))
        config = TrainConfig.from_json(stored)
        record = record_of_state(state, stored, f"checkpoint {path!r}")
    except (TypeError, ValueError, AttributeError):
        raise ConfigError(f"checkpoint {path!r} has no readable diffusion run config; only diffusion runs are exported") from None
    key = "ema" if ema else "model"
    weights = state.get(key)
    if not isinstance(weights, dict):
        raise ConfigError(f"checkpoint {path!r} has no {key!r} weights; it is damaged")
    config.out = out_dir
    metadata = {"step": str(found_step), "weights": "ema" if ema else "raw", "source": os.path.abspath(path)}
    write_weights_run(out_dir, config.to_json(), weights, metadata, record=record.to_json())
    return {"out": out_dir, "step": found_step, "weights": metadata["weights"], "tensors": len(weights)}


def import_weights_run(source: str, out_dir: str) -> Dict[str, Any]:
    """Check that `source` (a weights directory) loads as a denoiser, then copy it into the new run directory `out_dir`."""
    payload, tensors, metadata = read_weights_run(source)
    load_trained(source, ema=metadata.get("weights", "imported") != "raw")  # refuses what does not rebuild
    record = read_record(source, payload).to_json()  # a weights run written before records: from its config.json
    payload = dict(split_payload(payload)[0], out=out_dir)
    write_weights_run(out_dir, payload, tensors, {k: v for k, v in metadata.items() if k not in ("format", "version")}, record=record)
    return {"out": out_dir, "step": int(metadata.get("step", "0")), "weights": metadata.get("weights", "imported"), "tensors": len(tensors)}
