"""generate(): seeded batches, whole batches dealt to processes, labels and guidance per batch.

The references are written here by hand: EDM's Euler step on a Gaussian's closed-form
denoiser, the seeds cut into batches the way one process cuts them, and denoisers that
count what they are asked.
"""

from __future__ import annotations

import math

import pytest
import torch

from edm_space.errors import ConfigError
from edm_space.generation import Guidance, SamplerSettings, class_labels, deal_batches, generate
from edm_space.seeding import SeededNoise

F64 = torch.float64


def gaussian_denoiser(x_hat, sigma):
    """The posterior mean of N(0, 1) data: x / (1 + sigma^2) (EDM eq. 2 for a unit Gaussian)."""
    sigma = torch.as_tensor(sigma, dtype=F64).reshape(-1, *([1] * (x_hat.ndim - 1)))
    return x_hat / (1 + sigma**2)


def batch_dependent_denoiser(x_hat, sigma):
    """A denoiser whose output depends on the batch it is evaluated in, as a float32 network's may on some CPUs."""
    return gaussian_denoiser(x_hat, sigma) + 1e-3 * len(x_hat)


def test_batches_are_dealt_whole_in_contiguous_runs():
    seeds = list(range(25))
    one = deal_batches(seeds, 7)
    assert one == [seeds[0:7], seeds[7:14], seeds[14:21], seeds[21:25]]
    assert deal_batches(seeds, 7, 0, 2) == one[:2] and deal_batches(seeds, 7, 1, 2) == one[2:]
    # three processes: 4 batches as 2 + 2 + 0; concatenated in rank order they are one process's batches
    parts = [deal_batches(seeds, 7, r, 3) for r in range(3)]
    assert [b for part in parts for b in part] == one and parts[2] == []


@pytest.mark.parametrize("world", [2, 3])
def test_processes_together_compute_what_one_process_computes_even_when_the_batch_matters(world):
    seeds = list(range(25))
    settings = SamplerSettings("edm", "euler", 4)
    one = generate(batch_dependent_denoiser, seeds, [2], settings, batch_size=7)
    parts = [generate(batch_dependent_denoiser, seeds, [2], settings, batch_size=7, shard=(r, world)) for r in range(world)]
    assert [s for p in parts for s in p.seeds] == seeds
    assert torch.equal(torch.cat([p.samples for p in parts]), one.samples)
    # the premise: cut into other batches (contiguous halves, 13 + 12) the same seeds give other samples
    halves = torch.cat([generate(batch_dependent_denoiser, part, [2], settings, batch_size=7).samples for part in (seeds[:13], seeds[13:])])
    assert not torch.equal(halves, one.samples)


def test_solver_and_steps_left_out_are_the_formulations_own():
    # EDM's default sampler is Heun with 18 steps: 2 * 18 - 1 = 35 evaluations (EDM Table 1; the last step is Euler's)
    plain = generate(gaussian_denoiser, [0, 1], [2], SamplerSettings())
    assert plain.nfe == 35
    assert torch.equal(plain.samples, generate(gaussian_denoiser, [0, 1], [2], SamplerSettings("edm", "heun", 18)).samples)
    # the vp preset's own is Euler (one evaluation a step) with its 256 steps, not EDM's Heun
    vp = generate(gaussian_denoiser, [0, 1], [2], SamplerSettings("vp"))
    assert vp.nfe == 256
    assert torch.equal(vp.samples, generate(gaussian_denoiser, [0, 1], [2], SamplerSettings("vp", "euler", 256)).samples)


def test_a_sample_alone_equals_it_in_a_batch_and_matches_euler_by_hand():
    settings = SamplerSettings("edm", "euler", 3, churn=2.0)  # churn draws per-seed noise on every step
    batch = generate(gaussian_denoiser, [3, 9, 4], [2], settings, batch_size=3)
    alone = generate(gaussian_denoiser, [9], [2], settings)
    assert torch.equal(batch.samples[1], alone.samples[0]) and batch.nfe == 3
    # deterministic Euler by hand (EDM Alg. 1 with sigma(t) = t): x_{i+1} = x_i + (t_{i+1} - t_i) (x_i - D(x_i)) / t_i
    plain = generate(gaussian_denoiser, [9], [2], SamplerSettings("edm", "euler", 3))
    t = [80.0 ** (1 / 7) + i / 2 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7)) for i in range(3)]
    t = [v**7 for v in t] + [0.0]
    x = SeededNoise([9]).randn([1, 2], dtype=F64) * t[0]
    for a, b in zip(t[:-1], t[1:]):
        x = x + (b - a) * (x - gaussian_denoiser(x, torch.tensor([a], dtype=F64))) / a
    assert torch.allclose(plain.samples, x, rtol=1e-12, atol=1e-12)


def test_labels_follow_their_seeds_through_batches_and_processes():
    seen = []

    def labelled(x_hat, sigma, labels):
        seen.append(labels.argmax(1).tolist())
        return gaussian_denoiser(x_hat, sigma) + labels.argmax(1, keepdim=True).to(F64)

    seeds = [5, 6, 7, 8, 9]
    labels = class_labels(seeds, 3)
    assert labels.argmax(1).tolist() == [2, 0, 1, 2, 0]  # seed mod classes
    assert class_labels(seeds, 3, class_label=1).argmax(1).tolist() == [1] * 5
    one = generate(labelled, seeds, [2], SamplerSettings("edm", "euler", 2), batch_size=2, labels=labels)
    assert seen[0] == [2, 0] and seen[-1] == [0]
    rank1 = generate(labelled, seeds, [2], SamplerSettings("edm", "euler", 2), batch_size=2, labels=labels, shard=(1, 2))
    assert rank1.seeds == [9] and torch.equal(rank1.samples, one.samples[4:])
    with pytest.raises(ConfigError, match="4 labels for 5 seeds"):
        generate(labelled, seeds, [2], labels=labels[:4])


def test_guidance_weight_one_evaluates_the_conditional_model_alone():
    rows = []

    def counting(x_hat, sigma, labels):
        rows.append(len(x_hat))
        return gaussian_denoiser(x_hat, sigma) + labels[:, :1]

    labels = class_labels(range(4), 2)
    settings = SamplerSettings("edm", "heun", 3)
    plain = generate(counting, range(4), [2], settings, labels=labels)
    rows.clear()
    guided = generate(counting, range(4), [2], settings, labels=labels, guidance=Guidance(1.0))
    assert rows == [4] * guided.nfe and guided.rows == 4 * guided.nfe  # no null-label rows
    assert torch.equal(guided.samples, plain.samples)
    rows.clear()
    twice = generate(counting, range(4), [2], settings, labels=labels, guidance=Guidance(2.0))
    assert rows == [8] * twice.nfe and twice.rows == 8 * twice.nfe and twice.forward_passes == twice.nfe


def test_decode_sees_every_sample_once_in_seed_order():
    out = generate(gaussian_denoiser, range(5), [2], SamplerSettings("edm", "euler", 2), batch_size=2,
                   decode=lambda z: z.sum(dim=1, keepdim=True))
    raw = generate(gaussian_denoiser, range(5), [2], SamplerSettings("edm", "euler", 2), batch_size=2)
    assert out.samples.shape == (5, 1) and torch.equal(out.samples, raw.samples.sum(dim=1, keepdim=True))
    assert math.isfinite(float(out.samples.sum()))
