"""A diffusers scheduler that runs a solver of this project, so that diffusers pipelines can use every solver here.

    from diffusers import DDPMPipeline, DDPMScheduler
    from edm_space.compat.diffusers_scheduler import EdmSpaceScheduler
    pipe = DDPMPipeline(unet=unet, scheduler=EdmSpaceScheduler.from_solver("unipc-3", scheduler=DDPMScheduler()))
    images = pipe(batch_size=4, num_inference_steps=10, output_type="pt").images

The scheduler's formulation is a preset (given, or the one edm_space.interop.schedulers finds for a diffusers
scheduler's config). `set_timesteps(N)` lays out the solver's N steps (the preset's discretization unless one is
given) and lists, as `timesteps`, the network's time input c_noise at every evaluation the solver will make
(two per step for heun, one for multistep solvers): a pipeline calls the network once per entry. `step` turns
the network output F into the denoised D = c_skip x_hat + c_out F (EDM eq. 7), and returns as prev_sample the
network input c_in x_hat of the solver's next evaluation, or, after the last, the sample at t = 0.

Solvers here are loops, not step functions: `step` replays the loop from the start with the denoised values
it has been given (the arithmetic repeats exactly, the network is never called twice) until the loop asks
for the next one. A pipeline's first sample is taken as the network input at the first level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

import presets
import samplers

from ..errors import ConfigError
from ..interop.schedulers import formulation_of
from ..optional import require

require("diffusers", "edm_space.compat.diffusers_scheduler")

from diffusers.configuration_utils import ConfigMixin, register_to_config  # noqa: E402
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: E402
from diffusers.utils import BaseOutput  # noqa: E402

Tensor = torch.Tensor
F64 = torch.float64


@dataclass
class EdmSpaceSchedulerOutput(BaseOutput):
    """prev_sample: the network input of the next evaluation, or the final sample."""

    prev_sample: Tensor


class _Request(Exception):
    """The replayed solver asks for a denoised value it has not been given: (x_hat, sigma)."""

    def __init__(self, x_hat: Tensor, sigma: Tensor):
        super().__init__()
        self.x_hat, self.sigma = x_hat, sigma


class EdmSpaceScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler (set_timesteps / step) whose steps are those of solver `solver` of this project."""

    config_name = "scheduler_config.json"
    order = 1

    @register_to_config
    def __init__(self, solver: str = "unipc-3", preset: str = "ddpm", preset_options: Optional[Dict[str, Any]] = None,
                 discretization: Optional[str] = None, solver_options: Optional[Dict[str, Any]] = None, seed: int = 0):
        self.formulation = presets.get(preset, **(preset_options or {}))
        samplers.get(solver).check_options(dict(solver_options or {}))
        self.init_noise_sigma = 1.0
        self.timesteps = torch.zeros(0)
        self.num_inference_steps: Optional[int] = None
        self._sigmas: List[float] = []
        self._reset()

    @classmethod
    def from_solver(cls, solver: str, scheduler: Any = None, preset: Optional[str] = None,
                    preset_options: Optional[Dict[str, Any]] = None, **kwargs) -> "EdmSpaceScheduler":
        """The scheduler of `solver` for a diffusers `scheduler`'s formulation (or an explicit preset, default ddpm)."""
        if scheduler is not None:
            if preset is not None:
                raise ConfigError("give either scheduler= (whose formulation is used) or preset=, not both")
            preset, preset_options, _ = formulation_of(type(scheduler).__name__, dict(scheduler.config))
        return cls(solver=solver, preset=preset or "ddpm", preset_options=preset_options, **kwargs)

    def _reset(self) -> None:
        self._denoised: List[Tensor] = []
        self._pending: Optional[Tuple[Tensor, Tensor]] = None
        self._latents: Optional[Tensor] = None
        self._noise_seed = int(self.config.seed)

    def _run(self, denoiser, latents: Tensor) -> Tensor:
        generator = torch.Generator().manual_seed(self._noise_seed)
        randn_like = lambda x: torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)  # noqa: E731
        return samplers.sample(denoiser, latents, formulation=self.formulation, solver=self.config.solver,
                               num_steps=self.num_inference_steps, discretization=self.config.discretization,
                               randn_like=randn_like, **(self.config.solver_options or {}))

    def set_timesteps(self, num_inference_steps: int, device: Union[str, torch.device, None] = None) -> None:
        """Lay out the solver's steps; `timesteps` is the network's c_noise at every evaluation the solver makes."""
        self.num_inference_steps = int(num_inference_steps)
        self._reset()
        sigmas: List[Tensor] = []

        def record(x_hat: Tensor, sigma: Tensor) -> Tensor:  # a dry run: which levels does the solver evaluate at?
            sigmas.append(sigma[:1])
            return torch.zeros_like(x_hat)

        self._run(record, torch.zeros(1, 1, dtype=F64))
        levels = torch.cat(sigmas)
        self._sigmas = levels.tolist()
        self.timesteps = self.formulation.precond(levels)[3].to(torch.float32).to(device)

    def scale_model_input(self, sample: Tensor, timestep: Any = None) -> Tensor:
        """The sample already is the network's input (c_in x_hat)."""
        return sample

    def _replay(self) -> Union[_Request, Tensor]:
        """Run the solver with the denoised values given so far: the next request, or the final sample."""
        given = iter(self._denoised)

        def replay(x_hat: Tensor, sigma: Tensor) -> Tensor:
            found = next(given, None)
            if found is None:
                raise _Request(x_hat, sigma)
            return found

        try:
            return self._run(replay, self._latents)
        except _Request as request:
            return request

    def step(self, model_output: Tensor, timestep: Any, sample: Tensor, generator: Optional[torch.Generator] = None,
             return_dict: bool = True) -> Union[EdmSpaceSchedulerOutput, Tuple[Tensor]]:
        """Take the network output at the current evaluation; return the next evaluation's input (or the sample)."""
        if self.num_inference_steps is None:
            raise ConfigError("call set_timesteps(num_inference_steps) before step()")
        if len(self._denoised) >= len(self._sigmas):
            raise ConfigError(f"step() called more often than the solver evaluates ({len(self._sigmas)} times); call set_timesteps again")
        if self._latents is None:  # the first sample is the network input c_in x_hat at the first level
            if generator is not None:
                self._noise_seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
            sigma0 = torch.full((sample.shape[0],), self._sigmas[0], dtype=F64, device=sample.device)
            c_in = self.formulation.precond(sigma0)[2].reshape(-1, *[1] * (sample.ndim - 1))
            x_hat = sample.to(F64) / c_in
            self._latents = x_hat / self._sigmas[0]  # the sampler starts at x_hat = latents * sigma(t_0)
            self._pending = (x_hat, sigma0)
        x_hat, sigma = self._pending
        c_skip, c_out, _, _ = (c.to(F64).reshape(-1, *[1] * (sample.ndim - 1)) for c in self.formulation.precond(sigma))
        self._denoised.append(c_skip * x_hat + c_out * model_output.to(F64))
        outcome = self._replay()
        if isinstance(outcome, _Request):
            self._pending = (outcome.x_hat, outcome.sigma)
            c_in = self.formulation.precond(outcome.sigma)[2].to(F64).reshape(-1, *[1] * (sample.ndim - 1))
            prev = c_in * outcome.x_hat
        else:
            prev = outcome
        prev = prev.to(sample.dtype)
        return EdmSpaceSchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def __len__(self) -> int:
        return len(self._sigmas)
