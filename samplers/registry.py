"""The solver registry: a solver is one function with the common signature, registered by name.

    @register("euler", order=1, stochastic=False, paper="...")
    def euler(ode, x, t_steps, *, randn_like, callback, **options) -> Tensor

`ode` is a `ProbabilityFlow` (formulation + denoiser), `x` the float64 state at
t_steps[0], `t_steps` the float64 times t_0 > ... > t_N = 0. Every random draw
goes through `randn_like`. `callback(step, t, sigma, x, denoised)` is called once
per step with the state after the step and the first denoised estimate of it.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from edm_space.errors import ConfigError
from edm_space.registry import Option, Registry, check_option_values, declared_options

# Arguments every solver receives from `samplers.sample`; never user options.
COMMON_ARGUMENTS = ("randn_like", "callback")


@dataclass(frozen=True)
class SolverInfo:
    """A registered solver and its facts: order, denoiser evaluations per step, kind, paper.

    A run of N steps costs nfe(N) = (N - 1) * evaluations_per_step + evaluations_last_step
    denoiser evaluations (second-order single-step solvers take a first-order last step into sigma = 0).
    """

    name: str
    fn: Callable
    order: int
    stochastic: bool
    paper: str
    evaluations_per_step: int = 1
    evaluations_last_step: int = 1

    def nfe(self, num_steps: int) -> int:
        """Denoiser evaluations of `num_steps` steps."""
        if num_steps < 1:
            raise ConfigError(f"num_steps = {num_steps!r} is invalid; it must be >= 1")
        return (num_steps - 1) * self.evaluations_per_step + self.evaluations_last_step

    def steps_for_nfe(self, nfe: int) -> int:
        """The most steps whose cost is at most `nfe` evaluations (at least one step)."""
        if nfe < self.evaluations_last_step:
            return 1
        return 1 + (nfe - self.evaluations_last_step) // self.evaluations_per_step

    @property
    def nfe_per_step(self) -> str:
        """The per-step cost as the README's solver table writes it."""
        text = str(self.evaluations_per_step)
        if self.evaluations_last_step != self.evaluations_per_step:
            text += f" ({self.evaluations_last_step} on the last step)"
        return text

    @property
    def fixed_options(self) -> Dict[str, object]:
        """Keyword arguments the registered variant fixes (e.g. second_order=True for heun)."""
        return dict(getattr(self.fn, "fixed", {}))

    @property
    def options(self) -> Tuple[str, ...]:
        """The keyword options a user may set: the solver's keyword-only arguments, less the fixed and common ones."""
        return _user_options(self.fn)

    def check_options(self, options: Dict[str, object]) -> None:
        """Refuse an option the solver does not take (naming the ones it does) or a value not of its kind:
        its declaration in the function's OPTIONS, else its default's kind (a flag, a number, a name)."""
        parameters = inspect.signature(self.fn).parameters
        declared = {name: _solver_option(p.default) for name, p in parameters.items() if name in self.options}
        declared.update(declared_options(self.fn))
        skip = [name for name in parameters if name not in self.options]
        check_option_values(f"solver {self.name!r}", options, self.fn, skip=skip, declared=declared)


def _solver_option(default: object) -> Option:
    """A solver option without a declaration: true/false, a name, or any number but NaN (s_tmax may be inf)."""
    if isinstance(default, bool):
        return Option.flag()
    if isinstance(default, str):
        return Option.name()
    return Option.number(finite=False, optional=default is None)


@functools.lru_cache(maxsize=None)
def _user_options(fn: Callable) -> Tuple[str, ...]:
    fixed = set(getattr(fn, "fixed", {}))
    parameters = inspect.signature(fn).parameters
    return tuple(
        name for name, p in parameters.items() if p.kind == p.KEYWORD_ONLY and name not in fixed and name not in COMMON_ARGUMENTS
    )


SOLVERS: Registry = Registry("solver")
# Names other code bases use for solvers of this project (k-diffusion's sample_*, diffusers' schedulers).
for _alias, _target, _note in (
    ("dpmpp_2m", "dpm++2m", "k-diffusion's DPM-Solver++(2M)"),
    ("dpmpp_3m", "dpm++3m", "DPM-Solver++(3M), deterministic"),
    ("dpmpp_3m_sde", "dpm++3m", "the deterministic DPM-Solver++(3M); there is no SDE variant here"),
    ("euler_ancestral", "ancestral", "DDIM with eta = 1, k-diffusion's Euler ancestral step"),
    ("DPMSolverMultistep", "dpm++2m", "diffusers' default solver_order=2, algorithm_type dpmsolver++"),
    ("UniPC", "unipc-2", "diffusers' default solver_order=2 with the UniC corrector, bh2"),
):
    SOLVERS.alias(_alias, _target, _note)


def register(
    name: str,
    *,
    order: int,
    stochastic: bool,
    paper: str,
    evaluations_per_step: int = 1,
    evaluations_last_step: Optional[int] = None,
) -> Callable:
    """Register a solver function under `name` (evaluations_last_step defaults to evaluations_per_step)."""
    last = evaluations_per_step if evaluations_last_step is None else evaluations_last_step

    def wrap(fn: Callable) -> Callable:
        SOLVERS.add(name, SolverInfo(name, fn, order, stochastic, paper, evaluations_per_step, last))
        return fn

    return wrap


def get(name: str) -> SolverInfo:
    """The registered solver `name` (or an alias such as dpmpp_2m, with a note); an unknown name lists the valid ones."""
    return SOLVERS.get(name)


def names() -> List[str]:
    """Registered solver names (aliases not included)."""
    return SOLVERS.names()


def variant(fn: Callable, doc: str, defaults: Optional[Dict[str, object]] = None, **fixed) -> Callable:
    """`fn` as its own solver: `fixed` keyword arguments are part of its identity (e.g. euler = edm_solver with
    second_order=False) and not user options; `defaults` change the default of a user option (ddim: eta = 0)."""
    partial = functools.partial(fn, **fixed, **(defaults or {}))
    partial.__doc__ = doc
    partial.fixed = dict(fixed)
    return partial
