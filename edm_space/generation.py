"""generate(): from a denoiser and a list of seeds to samples, the one sampling loop of the project.

    from edm_space.generation import SamplerSettings, generate
    out = generate(denoiser, seeds=range(64), item_shape=[2], sampler=SamplerSettings("edm", "heun", 18))
    out.samples, out.nfe

Sample i starts from a latent drawn by its own generator seeded with seeds[i] and
draws its churn noise from that generator too (EDM's StackedRandomGenerator idea),
so a sample depends on its seed, not on which other seeds share its batch. The
seeds are cut into batches of `batch_size` in order; under torchrun the batches
are dealt WHOLE to the processes (contiguous runs of batches), so every process
evaluates exactly the batches one process would and the gathered result equals
one process's bit for bit on any hardware, whatever the network's arithmetic
does with the batch size.

`edm-space sample`, the demo and the benchmarks all sample through `generate`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist

import presets
import samplers

from .errors import ConfigError
from .guidance import GuidedDenoiser
from .parameterization import F64, Formulation
from .seeding import SeededNoise
from .distributed import distributed_context

Tensor = torch.Tensor

__all__ = ["SamplerSettings", "Guidance", "Generated", "generate", "deal_batches", "class_labels", "check_finite"]


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """How one batch is integrated: the arguments of `samplers.sample` other than the denoiser and latents.

    The one list of the sampler's settings and their defaults: `edm-space sample` holds one of these too
    (edm_space.sampling.SampleOptions.sampler). solver / num_steps None: the formulation's own
    (`Formulation.default_solver` / `default_steps`; edm's are heun and 18).
    """

    formulation: Union[Formulation, str] = "edm"
    solver: Optional[str] = None
    num_steps: Optional[int] = None
    discretization: Optional[str] = None
    sigma_min: Optional[float] = None
    sigma_max: Optional[float] = None
    rho: float = 7.0
    churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0
    final_step: str = "solver"
    analytic_first_step: bool = False
    data_mean: Optional[Tensor] = None
    state_dtype: torch.dtype = F64
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def resolved(self, formulation: Union[Formulation, str, None] = None) -> "SamplerSettings":
        """These settings for `formulation` (default: their own) as a Formulation, with solver / num_steps None
        replaced by its own."""
        f = presets.get(self.formulation if formulation is None else formulation)
        solver = f.default_solver if self.solver is None else self.solver
        return dataclasses.replace(self, formulation=f, solver=solver, num_steps=f.default_steps if self.num_steps is None else self.num_steps)

    def sample(self, denoiser: Callable, latents: Tensor, noise: SeededNoise, info: dict, progress: bool = False,
               callback: Optional[Callable] = None) -> Tensor:
        """`samplers.sample` of one batch with these settings and the batch's per-seed noise."""
        s = self if self.solver is not None and self.num_steps is not None else self.resolved()
        with torch.no_grad():
            return samplers.sample(
                denoiser, latents, formulation=s.formulation, solver=s.solver, num_steps=s.num_steps,
                discretization=s.discretization, sigma_min=s.sigma_min, sigma_max=s.sigma_max,
                churn=s.churn, s_tmin=s.s_tmin, s_tmax=s.s_tmax, s_noise=s.s_noise,
                randn_like=noise.randn_like, rho=s.rho, info=info, progress=progress, final_step=s.final_step,
                analytic_first_step=s.analytic_first_step, data_mean=s.data_mean, state_dtype=s.state_dtype,
                callback=callback, **s.options,
            )


@dataclasses.dataclass(frozen=True)
class Guidance:
    """Guidance of the sampled denoiser (see edm_space.guidance): weight w, the guide (None: classifier-free,
    the null label) and the interval (sigma_lo, sigma_hi] it applies in (None: everywhere)."""

    weight: float
    guide: Optional[Callable] = None
    interval: Optional[Tuple[float, float]] = None


@dataclasses.dataclass
class Generated:
    """What `generate` returns: samples in seed order (float64, CPU; decoded if a decoder was given), the seeds,
    the denoiser evaluations per sample (NFE), and the network forward passes and rows they cost in all."""

    samples: Tensor
    seeds: List[int]
    nfe: int
    forward_passes: int
    rows: int
    processes: int = 1


def deal_batches(seeds: Sequence[int], batch_size: int, rank: int = 0, world: int = 1) -> List[List[int]]:
    """The batches of seeds process `rank` of `world` samples: the seeds cut into batches of `batch_size` in
    order, dealt whole as contiguous runs (the first ceil(B / world) batches to rank 0, and so on).

    Concatenating every rank's batches in rank order gives the seeds in order, cut exactly as one process cuts them.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size} is invalid; it must be >= 1")
    if not 0 <= rank < world:
        raise ConfigError(f"rank {rank} is invalid for {world} processes")
    seeds = [int(s) for s in seeds]
    batches = [seeds[i : i + batch_size] for i in range(0, len(seeds), batch_size)]
    share = -(-len(batches) // world)
    return batches[rank * share : (rank + 1) * share]


def class_labels(seeds: Sequence[int], num_classes: int, class_label: Optional[int] = None) -> Tensor:
    """One-hot float64 labels [len(seeds), num_classes]: `class_label` for every row, or seed mod num_classes."""
    classes = [class_label if class_label is not None else int(s) % num_classes for s in seeds]
    return torch.nn.functional.one_hot(torch.tensor(classes, dtype=torch.long), num_classes).to(F64)


def generate(
    denoiser: Callable,
    seeds: Sequence[int],
    item_shape: Sequence[int],
    sampler: SamplerSettings = SamplerSettings(),
    *,
    batch_size: int = 500,
    labels: Optional[Tensor] = None,
    guidance: Optional[Guidance] = None,
    decode: Optional[Callable[[Tensor], Tensor]] = None,
    device: "torch.device | str" = "cpu",
    progress: bool = False,
    callback: Optional[Callable] = None,
    shard: Optional[Tuple[int, int]] = None,
) -> Generated:
    """Samples of `seeds` from `denoiser` (D(x_hat, sigma) or, with labels, D(x_hat, sigma, labels)).

    labels: one row per seed (one-hot floats, or class indices for the exact denoisers), given to the
    denoiser with the rows of each batch; see `class_labels`. guidance: a `Guidance` (w = 1 evaluates the
    conditional model alone). decode: applied to all samples at the end, e.g. a latent model's decoder.
    callback(step, t, sigma, x, denoised) watches the first batch (e.g. a TrajectoryRecorder).
    shard: (rank, world) samples only that rank's batches and returns them ungathered; None samples under
    torchrun's processes when they exist (each its whole batches, every process gets all samples back).
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("no seeds given; give at least one")
    if labels is not None and len(labels) != len(seeds):
        raise ConfigError(f"{len(labels)} labels for {len(seeds)} seeds; give one label per seed")
    gather = shard is None
    rank, world = distributed_context() if shard is None else shard  # torchrun's processes, or one
    mine = deal_batches(seeds, batch_size, rank, world)
    offset = sum(len(b) for r in range(rank) for b in deal_batches(seeds, batch_size, r, world))  # of my first seed
    results = [torch.zeros((0, *item_shape), dtype=F64)]
    nfe = passes = rows = 0
    for number, chunk in enumerate(mine):
        noise = SeededNoise(chunk)
        latents = noise.randn([len(chunk), *item_shape], dtype=F64).to(device)
        chunk_labels = None if labels is None else labels[offset : offset + len(chunk)].to(device)
        offset += len(chunk)
        model = _model_of(denoiser, chunk_labels, guidance)
        info: dict = {}
        watch = callback if number == 0 and rank == 0 else None
        x = sampler.sample(model, latents, noise, info, progress=progress, callback=watch)
        results.append(x.to("cpu", F64))
        nfe = int(info["nfe"])
        if isinstance(model, GuidedDenoiser):
            passes, rows = passes + model.forward_passes, rows + model.rows
        else:
            passes, rows = passes + nfe, rows + nfe * len(chunk)
    samples = torch.cat(results)
    if gather and world > 1:
        samples, nfe, passes, rows = _gather(samples, nfe, passes, rows, world)
    if decode is not None:
        samples = decode(samples)
    return Generated(samples, seeds if gather else [s for b in mine for s in b], nfe, passes, rows, world)


def _model_of(denoiser: Callable, labels: Optional[Tensor], guidance: Optional[Guidance]) -> Callable:
    """The sampler's denoiser of one batch: guided, bound to the batch's labels, or the denoiser itself."""
    if guidance is not None and guidance.weight != 1:  # w = 1 is exactly the conditional model
        return GuidedDenoiser(denoiser, guidance.weight, labels=labels, guide=guidance.guide, interval=guidance.interval)
    if labels is not None:
        return lambda x_hat, sigma: denoiser(x_hat, sigma, labels)
    return denoiser


def _gather(samples: Tensor, nfe: int, passes: int, rows: int, world: int) -> Tuple[Tensor, int, int, int]:
    """Every rank's samples in rank order (= seed order), the NFE and the summed cost, on every rank."""
    parts: List[Any] = [None] * world
    dist.all_gather_object(parts, (samples, nfe, passes, rows))
    nfe = max(p[1] for p in parts)  # a rank without a batch reports 0
    return torch.cat([p[0] for p in parts]), nfe, sum(p[2] for p in parts), sum(p[3] for p in parts)


def check_finite(generated: Generated, what: str, guidance: Optional[Guidance] = None) -> None:
    """One line naming the rows that are not finite, and the likely cause: a guidance weight, or too few steps."""
    flat = generated.samples.reshape(len(generated.samples), -1)
    bad = (~torch.isfinite(flat).all(dim=1)).nonzero().flatten().tolist()
    if not bad:
        return
    seeds = ", ".join(str(generated.seeds[i]) for i in bad[:5]) + (" ..." if len(bad) > 5 else "")
    if guidance is not None and guidance.weight != 1:
        cure = f"the guidance weight w = {guidance.weight:g} (--guidance) amplifies D - D_guide beyond float range; use a smaller --guidance"
    else:
        cure = "try more steps"
    raise ConfigError(f"sampling produced non-finite values for {len(bad)} of {len(flat)} samples (seeds {seeds}) with {what}; {cure}")
