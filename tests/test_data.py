"""Tests for edm_space.data: the built-in toy sets."""

import math

import numpy as np
import pytest
import torch

from edm_space import data

TOY = ["moons", "8gaussians", "checkerboard", "swissroll"]


def _raw(name, x):
    """Undo load()'s fixed affine map: back to the generator's natural units."""
    mean, std = (np.asarray(v) for v in data.RAW_MOMENTS[name])
    return x.double().numpy() / data.TARGET_STD * std + mean


def test_names_lists_toy_sets():
    assert set(TOY) <= set(data.names())
    assert data.names() == sorted(data.names())


@pytest.mark.parametrize("name", TOY)
def test_shape_finite_and_standardized(name):
    x = data.load(name)
    assert isinstance(x, torch.Tensor)
    assert x.dtype == torch.float32
    assert x.shape == (data.DEFAULT_TOY_N, 2) == (10_000, 2)
    assert torch.isfinite(x).all()
    mean, std = x.double().mean(0), x.double().std(0)
    assert (mean.abs() < 0.1).all(), mean
    assert ((std > 0.35) & (std < 0.65)).all(), std
    assert abs(data.estimate_sigma_data(x) - 0.5) < 0.05


@pytest.mark.parametrize("name", TOY)
def test_deterministic_and_seeded(name):
    a = data.load(name, n=500, seed=7)
    b = data.load(name, n=500, seed=7)
    c = data.load(name, n=500, seed=8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert data.load(name, n=3).shape == (3, 2)


def test_does_not_touch_global_rng():
    torch.manual_seed(123)
    np.random.seed(123)
    t_before, n_before = torch.rand(3), np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(123)
    data.load("moons", n=100)
    assert torch.equal(torch.rand(3), t_before)
    assert np.array_equal(np.random.rand(3), n_before)


@pytest.mark.parametrize("name", TOY)
def test_scale_does_not_depend_on_n(name):
    small = data.load(name, n=2000, seed=1).double().std(0)
    large = data.load(name, n=20000, seed=2).double().std(0)
    assert (small - large).abs().max() < 0.05, (small, large)


def _dist_to_arc(p, centre, lo, hi):
    """Distance from points p [n, 2] to the unit-radius arc of angles [lo, hi] around centre."""
    d = p - np.asarray(centre)
    ang = np.mod(np.arctan2(d[:, 1], d[:, 0]) - lo, 2 * math.pi) + lo
    on_arc = ang <= hi
    radial = np.abs(np.hypot(d[:, 0], d[:, 1]) - 1.0)
    ends = np.asarray(centre) + np.array([[math.cos(lo), math.sin(lo)], [math.cos(hi), math.sin(hi)]])
    to_ends = np.min(np.linalg.norm(p[:, None, :] - ends[None], axis=2), axis=1)
    return np.where(on_arc, radial, to_ends)


def test_moons_lie_on_two_half_circles():
    p = _raw("moons", data.load("moons", n=4000, seed=3))
    upper = _dist_to_arc(p, (0.0, 0.0), 0.0, math.pi)  # upper half of the circle at (0, 0)
    lower = _dist_to_arc(p, (1.0, 0.5), math.pi, 2 * math.pi)  # lower half of the circle at (1, 0.5)
    d = np.minimum(upper, lower)
    noise = data.MOONS_NOISE
    # 2-D Gaussian noise seen radially: mean |N(0, s^2)| = s sqrt(2/pi) ~ 0.8 s
    assert d.mean() < 1.2 * noise, d.mean()
    assert np.quantile(d, 0.999) < 5 * noise
    # half the points on each moon, and each arc covered end to end
    on_upper = upper < lower
    assert abs(on_upper.mean() - 0.5) < 0.02
    ang_u = np.arctan2(p[on_upper, 1], p[on_upper, 0])
    hist, _ = np.histogram(ang_u, bins=6, range=(0, math.pi))
    assert hist.min() > 0.6 * hist.mean(), hist
    q = p[~on_upper] - np.array([1.0, 0.5])
    hist, _ = np.histogram(np.arctan2(q[:, 1], q[:, 0]), bins=6, range=(-math.pi, 0))
    assert hist.min() > 0.6 * hist.mean(), hist


def test_moons_check_rejects_full_circles():
    # the arc check above must fail for a wrong generator: full circles
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 2 * math.pi, 4000)
    p = np.concatenate([np.stack([np.cos(t), np.sin(t)], 1), np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1)])
    d = np.minimum(_dist_to_arc(p, (0, 0), 0, math.pi), _dist_to_arc(p, (1, 0.5), math.pi, 2 * math.pi))
    assert d.mean() > 1.2 * data.MOONS_NOISE


def test_checkerboard_on_black_squares():
    x = data.load("checkerboard", n=20000, seed=5)
    p = _raw("checkerboard", x)
    assert (np.abs(p) <= 2 + 1e-5).all()  # on the 4x4 board [-2, 2]^2
    frac = p - np.round(p)
    safe = (np.abs(frac) > 1e-5).all(axis=1)  # skip float32 round-off at cell edges
    assert safe.mean() > 0.99
    cell = np.floor(p[safe]).astype(int)
    assert ((cell.sum(axis=1) % 2) == 0).all()  # black: i + j even
    # all 8 black squares, evenly
    idx = (cell[:, 0] + 2) * 4 + (cell[:, 1] + 2)
    counts = np.bincount(idx, minlength=16)
    black = [(i + 2) * 4 + (j + 2) for i in range(-2, 2) for j in range(-2, 2) if (i + j) % 2 == 0]
    assert len(black) == 8
    assert (counts[black] > 0.85 * safe.sum() / 8).all(), counts


def test_8gaussians_near_centres():
    p = _raw("8gaussians", data.load("8gaussians", n=4000, seed=2))
    ang = np.arange(8) * math.pi / 4
    centres = data.GAUSSIANS_RADIUS * np.stack([np.cos(ang), np.sin(ang)], 1)
    dist = np.linalg.norm(p[:, None] - centres[None], axis=2)
    nearest = dist.argmin(1)
    assert np.quantile(dist.min(1), 0.99) < 4 * data.GAUSSIANS_STD
    counts = np.bincount(nearest, minlength=8)
    assert (counts > 0.8 * len(p) / 8).all(), counts


def test_swissroll_radius_grows_with_angle():
    p = _raw("swissroll", data.load("swissroll", n=4000, seed=4))
    r = np.hypot(p[:, 0], p[:, 1])
    assert r.min() > 1.5 * math.pi - 4 * data.SWISSROLL_NOISE
    assert r.max() < 4.5 * math.pi + 4 * data.SWISSROLL_NOISE


def test_raw_moments_match_a_large_sample():
    for name in TOY:
        x = data.load(name, n=200_000, seed=11).double()
        assert x.mean(0).abs().max() < 0.01, name
        assert (x.std(0) - 0.5).abs().max() < 0.01, name


def test_unknown_name_message():
    with pytest.raises(ValueError) as e:
        data.load("moonz")
    msg = str(e.value)
    assert "moonz" in msg and "\n" not in msg
    for name in data.names():
        assert name in msg


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_n_message(bad):
    with pytest.raises(ValueError) as e:
        data.load("moons", n=bad)
    msg = str(e.value)
    assert repr(bad) in msg and "\n" not in msg


def test_bad_seed_message():
    with pytest.raises(ValueError, match="-1"):
        data.load("moons", seed=-1)


def test_estimate_sigma_data():
    x = torch.tensor([[1.0, -1.0], [1.0, -1.0]])
    assert data.estimate_sigma_data(x) == pytest.approx(1.0)
    assert data.estimate_sigma_data(np.full((4, 3), 2.0)) == 0.0
    with pytest.raises(ValueError):
        data.estimate_sigma_data(torch.empty(0, 2))
    with pytest.raises(ValueError):
        data.estimate_sigma_data(torch.tensor([1.0, float("nan")]))


def test_register_rejects_duplicates():
    with pytest.raises(ValueError, match="moons"):
        data.register("moons")(lambda n, rng: np.zeros((1, 2)))
