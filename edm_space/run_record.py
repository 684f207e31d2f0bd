"""The run record: what a run derives while it runs, kept apart from the options the user gave.

A run directory holds the user's options in config.json (a TrainConfig or ModelConfig: the command's
options, nothing filled in) and what the run found out in record.json (a RunRecord): the data's
sigma_data, item shape and number of classes, a latent run's latent space (the autoencoder it
encodes with and the normalization of its latents), the held-out count of a family or autoencoder
run, the parameter count, and the step and checkpoint reached. Rank 0 writes record.json
atomically with each checkpoint, and each checkpoint stores the record it was written with.

Runs written before record.json existed kept the derived facts inside config.json (and inside
each checkpoint's stored config); `split_payload` reads such a payload as (options, record), so
they load and resume as before. `Run` reads a run's options and record together: the derived facts
from the record, every other attribute from the config.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from .errors import ConfigError
from .files import read_json, write_atomic

__all__ = ["RunRecord", "Run", "RECORD_NAME", "LEGACY_FACTS", "split_payload", "read_record", "write_record", "record_of_state"]

RECORD_NAME = "record.json"
# The derived facts older config.json files held among the options.
LEGACY_FACTS = ("sigma_data", "item_shape", "num_classes", "latent_space", "held_out")


@dataclass(frozen=True)
class RunRecord:
    """Facts a run derived while running (record.json); None where a run has no such fact (yet)."""

    sigma_data: Optional[float] = None  # the data's std (edm_space.data.estimate_sigma_data), or a latent space's
    item_shape: Optional[List[int]] = None
    num_classes: int = 0
    latent_space: Optional[Dict[str, Any]] = None  # a latent run's autoencoder and normalization (edm_space.latent)
    data: Optional[str] = None  # the data set trained on, where the options name none (a latent run on its autoencoder's items)
    held_out: Optional[int] = None  # items a family or autoencoder run set aside for evaluation
    parameters: Optional[int] = None  # trainable numbers of the model
    step: int = 0  # steps reached: the newest checkpoint's
    checkpoint: Optional[str] = None  # that checkpoint, relative to the run directory

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, payload: Dict[str, Any], where: str = "record.json") -> "RunRecord":
        if not isinstance(payload, dict):
            raise ConfigError(f"{where} does not hold a run record (a JSON object)")
        unknown = sorted(set(payload) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"{where} has unknown fields {unknown}; was it written by another tool?")
        return cls(**payload)


def split_payload(payload: Dict[str, Any], facts: Tuple[str, ...] = LEGACY_FACTS, keep: Tuple[str, ...] = ()) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(options, derived facts) of a config payload: an older run's config.json held the facts among its options.
    Keys in `keep` are options as well as facts (a ModelConfig's held_out): they stay in both."""
    options = {key: value for key, value in payload.items() if key not in facts or key in keep}
    derived = {key: payload[key] for key in facts if key in payload}
    return options, derived


def _record_path(run_dir: str) -> str:
    return os.path.join(run_dir, RECORD_NAME)


def read_record(run_dir: str, payload: Dict[str, Any]) -> RunRecord:
    """The run's record.json; for a run written before it existed, the facts its config.json `payload` holds."""
    path = _record_path(run_dir)
    if os.path.isfile(path):
        return RunRecord.from_json(read_json(path, "run record"), repr(path))
    return RunRecord.from_json(split_payload(payload)[1], f"{os.path.join(run_dir, 'config.json')!r}")


def write_record(run_dir: str, record: RunRecord) -> None:
    """record.json in the run directory, atomically."""
    write_atomic(_record_path(run_dir), (json.dumps(record.to_json(), indent=2) + "\n").encode())


def record_of_state(state: Dict[str, Any], stored: Dict[str, Any], what: str) -> RunRecord:
    """The record a checkpoint was written with; a checkpoint from before records has its facts in its `stored` config."""
    if "record" not in state:
        return RunRecord.from_json(split_payload(stored)[1], what)
    try:
        payload = json.loads(state["record"])
    except (TypeError, ValueError):
        payload = None
    return RunRecord.from_json(payload, what)


class Run:
    """A run's options (`config`, as the user gave them) and what it derived (`record`), read as one: an attribute that
    the record holds (not None) comes from the record, every other from the config, so `run.sigma_data` and
    `run.preset` both read."""

    def __init__(self, config: Any, record: RunRecord):
        self.config, self.record = config, record

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("config", "record"):
            raise AttributeError(name)
        if name in _RECORD_FIELDS:
            value = getattr(self.record, name)
            if value is not None or not hasattr(self.config, name):
                return value
        return getattr(self.config, name)

    def __repr__(self) -> str:
        return f"Run({self.config!r}, {self.record!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and (self.config, self.record) == (other.config, other.record)

    def facts(self, keys: Tuple[str, ...]) -> Dict[str, Any]:
        """The options as JSON with `keys` read through the run (the record's value where it has one): the layout an older
        run's config.json had, for comparing with what a checkpoint stores."""
        return {**self.config.to_json(), **{key: getattr(self, key) for key in keys}}


_RECORD_FIELDS = frozenset(f.name for f in dataclasses.fields(RunRecord))
