"""The solver registry: a solver is one function with the common signature, registered by name.

    @register("euler", order=1, nfe_per_step="1", stochastic=False, paper="...")
    def euler(ode, x, t_steps, *, randn_like, callback, **options) -> Tensor

`ode` is a `ProbabilityFlow` (formulation + denoiser), `x` the float64 state at
t_steps[0], `t_steps` the float64 times t_0 > ... > t_N = 0. Every random draw
goes through `randn_like`. `callback(step, t, sigma, x, denoised)` is called once
per step with the state after the step and the first denoised estimate of it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Dict, List

from edm_space.errors import unknown


@dataclass(frozen=True)
class SolverInfo:
    """A registered solver and the facts the README's solver table shows."""

    name: str
    fn: Callable
    order: int
    nfe_per_step: str
    stochastic: bool
    paper: str


SOLVERS: Dict[str, SolverInfo] = {}


def register(name: str, *, order: int, nfe_per_step: str, stochastic: bool, paper: str) -> Callable:
    """Register a solver function under `name`."""

    def wrap(fn: Callable) -> Callable:
        SOLVERS[name] = SolverInfo(name, fn, order, nfe_per_step, stochastic, paper)
        return fn

    return wrap


def get(name: str) -> SolverInfo:
    """The registered solver `name`; an unknown name lists the valid ones."""
    if name not in SOLVERS:
        raise unknown("solver", name, SOLVERS)
    return SOLVERS[name]


def names() -> List[str]:
    """Registered solver names."""
    return list(SOLVERS)


def variant(fn: Callable, doc: str, **fixed) -> Callable:
    """`fn` with some keyword arguments fixed, documented as its own solver (e.g. euler = edm_solver, second_order=False)."""
    partial = functools.partial(fn, **fixed)
    partial.__doc__ = doc
    return partial
