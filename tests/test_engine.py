"""The run engine (edm_space.engine) on a task small enough to follow by hand: a scalar w fitted by gradient
descent to targets drawn from the step generator. The logged means, the checkpoints kept, the checkpoint layout
and the divergence rule are checked against a plain-Python replay of the same steps."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import pytest
import torch

from edm_space import engine
from edm_space.rundir import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, TrainingDiverged, list_checkpoints, load_checkpoint
from edm_space.seeding import step_generator

LR = 0.1
BATCH = 4


@dataclass
class ToyConfig:
    seed: int = 3

    def to_json(self):
        return asdict(self)


def target(seed: int, step: int) -> float:
    return float(torch.randn((), generator=step_generator(seed, step), dtype=torch.float64))


class ToyTask:
    """Loss (w - target_s)^2 at step s; a gradient step w -= LR * 2 (w - target_s). `nan_at`: the step whose loss is NaN."""

    def __init__(self, nan_at=None):
        self.config = ToyConfig()
        self.w = torch.zeros((), dtype=torch.float64)
        self.nan_at = nan_at

    def _loss(self, step: int) -> float:
        return math.nan if step == self.nan_at else float((self.w - target(self.config.seed, step)) ** 2)

    def train_step(self, step, check):
        loss = self._loss(step)
        check("toy loss", loss)
        self.w = self.w - LR * 2 * (self.w - target(self.config.seed, step))
        return {"loss": loss}

    def final_check(self, step, check):
        check("toy loss of the final weights", self._loss(step))

    def images_seen(self, done):
        return done * BATCH

    def log_fields(self, done, means):
        return {"loss": means["loss"]}

    def checkpoint_states(self):
        return {"model": {"w": self.w.clone()}}


def replay(steps: int, seed: int = 3):
    """(loss of each step, w after each step) by plain float arithmetic."""
    w, losses, weights = 0.0, [], []
    for step in range(steps):
        t = target(seed, step)
        losses.append((w - t) ** 2)
        w = w - LR * 2 * (w - t)
        weights.append(w)
    return losses, weights


def cadence(steps=7, log_every=3, checkpoint_every=2, keep=2):
    return engine.Cadence(steps=steps, log_every=log_every, checkpoint_every=checkpoint_every, keep_checkpoints=keep, batch=BATCH)


def read_log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_log_windows_checkpoints_and_layout(tmp_path):
    engine.run_steps(str(tmp_path), ToyTask(), 0, cadence(), torch.device("cpu"), progress=False)
    losses, weights = replay(7)
    entries = read_log(tmp_path)
    # A log entry every 3 steps and at the end, each the mean over its own window.
    assert [e["step"] for e in entries] == [3, 6, 7]
    assert [e["images"] for e in entries] == [12, 24, 28]
    for entry, window in zip(entries, (losses[0:3], losses[3:6], losses[6:7])):
        assert entry["loss"] == pytest.approx(sum(window) / len(window), rel=1e-12)
        assert entry["images_per_s"] > 0
    # Checkpoints every 2 steps and at the end; 2 kept (the confirmed newest and the one before).
    assert [step for step, _ in list_checkpoints(str(tmp_path))] == [6, 7]
    state = load_checkpoint(list_checkpoints(str(tmp_path))[-1][1])
    assert (state["format"], state["version"], state["step"]) == (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, 7)
    assert float(state["model"]["w"]) == pytest.approx(weights[6], rel=1e-12)
    assert json.loads(state["config"]) == {"seed": 3}
    assert json.loads((tmp_path / "config.json").read_text()) == {"seed": 3}


def test_resume_continues_the_replay(tmp_path):
    engine.run_steps(str(tmp_path), ToyTask(), 0, cadence(steps=4), torch.device("cpu"), progress=False)
    task = ToyTask()
    task.w = load_checkpoint(list_checkpoints(str(tmp_path))[-1][1])["model"]["w"]
    engine.run_steps(str(tmp_path), task, 4, cadence(steps=7), torch.device("cpu"), progress=False)
    _, weights = replay(7)
    assert float(task.w) == pytest.approx(weights[6], rel=1e-12)
    # The log of the first call ends at step 4 (its own end) and the second call continues it.
    assert [e["step"] for e in read_log(tmp_path)] == [3, 4, 6, 7]


def test_divergence_sets_aside_the_checkpoint_of_the_weights_that_gave_it(tmp_path):
    # The checkpoint of step 4 holds the weights whose loss at step 4 is NaN: it is set aside, that of step 2 is named.
    with pytest.raises(TrainingDiverged, match=r"toy loss became nan at step 4; the last good checkpoint is .*checkpoint-00000002\.pt"):
        engine.run_steps(str(tmp_path), ToyTask(nan_at=4), 0, cadence(), torch.device("cpu"), progress=False)
    assert [step for step, _ in list_checkpoints(str(tmp_path))] == [2]
    assert (tmp_path / "checkpoints" / "diverged-checkpoint-00000004.pt").is_file()


def test_the_final_checkpoint_is_checked_on_the_next_batch(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"toy loss of the final weights became nan at step 7"):
        engine.run_steps(str(tmp_path), ToyTask(nan_at=7), 0, cadence(), torch.device("cpu"), progress=False)
    assert [step for step, _ in list_checkpoints(str(tmp_path))] == [4, 6]
    assert (tmp_path / "checkpoints" / "diverged-checkpoint-00000007.pt").is_file()
