"""Latent diffusion: per-channel normalization, the encoded cache, decoding at sampling, and a changed autoencoder refused."""

import json
import shutil

import numpy as np
import pytest
import torch

from edm_space import latent
from edm_space.cli import main
from edm_space.data import load
from edm_space.errors import ConfigError
from edm_space.model_training import HOLDOUT_SEED, ModelConfig, train_model
from edm_space.rundir import list_checkpoints, load_checkpoint, save_checkpoint
from edm_space.training import TrainConfig, read_run_config, train
from conftest import one_torch_thread

DIT = {"depth": 1, "width": 32, "heads": 2, "patch": 2}


pytestmark = pytest.mark.usefixtures("one_thread", "no_debug_env")


@pytest.fixture(scope="module")
def autoencoder_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae") / "kl"
    with one_torch_thread():
        train_model(ModelConfig(kind="autoencoder", name="kl", options={"channels": 8, "latent_channels": 2, "downsample": 2},
                                data="digits", steps=6, batch=32, lr=1e-3, checkpoint_every=6, out=str(out)), progress=False, device="cpu")
    return str(out)


def latent_config(out, autoencoder_run, **overrides):
    settings = dict(preset="edm", data="digits", data_size=200, net="dit", net_options=DIT, steps=4, batch=16,
                    warmup_images=0, checkpoint_every=4, latent=autoencoder_run, out=str(out))
    settings.update(overrides)
    return TrainConfig(**settings)


def test_normalization_round_trips_and_gives_each_channel_the_target_std(autoencoder_run):
    x = load("digits", n=120, seed=1)
    space, z = latent.encode_data(x, autoencoder_run, "mean", seed=0)
    z = z.to(torch.float64)
    for channel in range(z.shape[1]):
        values = z[:, channel]
        assert abs(float(values.mean())) < 1e-6
        assert abs(float(values.std(correction=0)) - latent.LATENT_SIGMA_DATA) < 1e-6
    raw = torch.randn(5, *z.shape[1:], dtype=torch.float64)
    torch.testing.assert_close(space.denormalize(space.normalize(raw)), raw, rtol=1e-12, atol=1e-12)
    # normalize is (z - shift) * scale per channel, written out by hand for channel 1
    expected = (raw[:, 1] - space.shift[1]) * space.scale[1]
    torch.testing.assert_close(space.normalize(raw)[:, 1], expected, rtol=1e-12, atol=0)


def test_a_latent_run_caches_its_latents_and_samples_decoded_images(tmp_path, autoencoder_run, capsys):
    out = tmp_path / "latent"
    train(latent_config(out, autoencoder_run), progress=False, device="cpu")
    config = read_run_config(str(out))
    assert config.item_shape == [2, 4, 4] and config.sigma_data == latent.LATENT_SIGMA_DATA
    assert config.latent_space["checksum"] and config.latent_space["step"] == 6
    with np.load(out / "latents.npz") as cache:
        assert cache["latents"].shape == (200, 2, 4, 4) and str(cache["checksum"]) == config.latent_space["checksum"]
    main(["sample", "--ckpt", str(out), "--n", "6", "--steps", "4", "--trajectory", "--out", str(tmp_path / "s.npz")])
    samples = np.load(tmp_path / "s.npz")["samples"]
    assert samples.shape == (6, 1, 8, 8)  # the data's shape, from the decoder
    assert (tmp_path / "s_trajectory.png").exists()
    # the samples are the decoder's output of the sampled latents: decode them again by hand
    space = latent.open_latent_space(config.latent_space, str(out))
    assert np.isfinite(samples).all() and np.abs(samples).max() < 10
    assert space.decode(torch.zeros(1, 2, 4, 4)).shape == (1, 1, 8, 8)


def test_resuming_reuses_the_cache_without_encoding(tmp_path, autoencoder_run, monkeypatch):
    out = tmp_path / "latent"
    train(latent_config(out, autoencoder_run, steps=2, checkpoint_every=2), progress=False, device="cpu")
    monkeypatch.setattr(latent, "_encode", lambda *a, **k: pytest.fail("the cache should have been used"))
    train(latent_config(out, autoencoder_run), progress=False, device="cpu")
    assert list_checkpoints(str(out))[-1][0] == 4


def test_a_changed_autoencoder_is_refused_with_one_line(tmp_path, autoencoder_run, capsys):
    autoencoder = tmp_path / "ae-copy"
    shutil.copytree(autoencoder_run, autoencoder)
    out = tmp_path / "latent"
    train(latent_config(out, str(autoencoder)), progress=False, device="cpu")
    # The autoencoder's recorded checkpoint now holds other weights (retrained, say).
    step, path = list_checkpoints(str(autoencoder))[-1]
    state = load_checkpoint(path)
    first = next(iter(state["model"]))
    state["model"][first] = state["model"][first] + 1.0
    save_checkpoint(path, state)
    with pytest.raises(SystemExit) as done:
        main(["sample", "--ckpt", str(out), "--n", "2", "--out", str(tmp_path / "s.npz")])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "changed after" in err and "checksum" in err
    assert not (tmp_path / "s.npz").exists()
    with pytest.raises(ConfigError, match="changed after"):  # resuming the latent run is refused too
        train(latent_config(out, str(autoencoder), steps=6), progress=False, device="cpu")


def test_latent_training_refuses_a_run_that_is_not_an_autoencoder(tmp_path, capsys):
    train(TrainConfig(data="digits", data_size=64, net="unet", net_options={"channels": 8, "channel_mult": [1, 2], "blocks_per_level": 1},
                      steps=2, batch=16, out=str(tmp_path / "diffusion")), progress=False, device="cpu")
    with pytest.raises(ConfigError, match="not an autoencoder run"):
        train(latent_config(tmp_path / "latent", str(tmp_path / "diffusion")), progress=False, device="cpu")
    assert not (tmp_path / "latent").exists()


def test_a_guide_on_another_autoencoder_or_an_autoencoder_run_is_refused(tmp_path, autoencoder_run, capsys):
    from helpers_cli import cli_error

    other = tmp_path / "kl-other"  # the same architecture and data, other weights: latents of the same shape
    train_model(ModelConfig(kind="autoencoder", name="kl", options={"channels": 8, "latent_channels": 2, "downsample": 2},
                            data="digits", steps=6, batch=32, lr=1e-3, checkpoint_every=6, seed=1, out=str(other)), progress=False, device="cpu")
    train(latent_config(tmp_path / "a", autoencoder_run), progress=False, device="cpu")
    train(latent_config(tmp_path / "b", str(other), seed=1), progress=False, device="cpu")
    base = ["sample", "--ckpt", tmp_path / "a", "--n", "2", "--steps", "2", "--guidance", "2", "--out", tmp_path / "out" / "s.npz"]
    line = cli_error([*base, "--guide", tmp_path / "b"], capsys, names=["--guide", "autoencoder", "kl-other"], roots=[tmp_path])
    assert "same space" in line
    line = cli_error([*base, "--guide", autoencoder_run], capsys, names=["--guide", "autoencoder", "not a diffusion run"], roots=[tmp_path])
    assert "unknown fields" not in line
    # a guide of the same latent space is accepted (autoguidance of an unconditional model)
    train(latent_config(tmp_path / "c", autoencoder_run, seed=2, steps=2, checkpoint_every=2), progress=False, device="cpu")
    main([*[str(a) for a in base], "--guide", str(tmp_path / "c")])
    assert np.load(tmp_path / "out" / "s.npz")["samples"].shape == (2, 1, 8, 8)


@pytest.mark.parametrize("argv, names", [
    (["--solver", "heun", "--steps", "10"], ["--solver", "--steps"]),
    (["--discretization", "vp", "--churn", "1"], ["--discretization", "--churn"]),
    (["--guidance", "2"], ["--guidance"]),
    (["--trajectory"], ["--trajectory"]),
    (["--precision", "bf16"], ["--precision"]),
])
def test_a_family_run_refuses_the_diffusion_sampler_options(argv, names, tmp_path, autoencoder_run, capsys):
    from helpers_cli import cli_error

    # a KL autoencoder run is sampled by its own sampler (its prior), as a family run is
    line = cli_error(["sample", "--ckpt", autoencoder_run, "--n", "2", *argv, "--out", tmp_path / "s.npz"], capsys,
                     names=names, roots=[tmp_path])
    assert "family or autoencoder run" in line


def test_a_family_run_samples_into_a_missing_folder(tmp_path, autoencoder_run, capsys):
    main(["sample", "--ckpt", autoencoder_run, "--n", "3", "--out", str(tmp_path / "new" / "s.npz")])
    assert np.load(tmp_path / "new" / "s.npz")["samples"].shape == (3, 1, 8, 8)


def test_train_latent_without_data_takes_the_autoencoders_training_items(tmp_path, autoencoder_run, capsys):
    out = tmp_path / "latent"
    main(["train", "--latent", autoencoder_run, "--net", "dit", *[f"--net-option={k}={v}" for k, v in DIT.items()],
          "--steps", "2", "--batch", "16", "--warmup", "0", "--out", str(out)])
    config = read_run_config(str(out))
    assert config.data == "digits" and config.latent_space["data"] == latent.AUTOENCODER_DATA
    # The autoencoder's training items by the documented split (a tenth held out by HOLDOUT_SEED), encoded by hand.
    held = np.random.default_rng(HOLDOUT_SEED).permutation(1797)[:179]
    x = load("digits")[torch.from_numpy(np.setdiff1d(np.arange(1797), held))]
    space = latent.open_latent_space(config.latent_space, str(out))
    with torch.no_grad():
        expected = space.normalize(space.autoencoder.encode(x)[0].double()).float()
    with np.load(out / "latents.npz") as cache:
        torch.testing.assert_close(torch.from_numpy(cache["latents"]), expected, rtol=1e-5, atol=1e-5)
    # Resumed without --data, it keeps training on the same items (the cache, checked by the encoder not being called).
    main(["train", "--latent", autoencoder_run, "--steps", "3", "--out", str(out)])
    assert list_checkpoints(str(out))[-1][0] == 3 and read_run_config(str(out)).data == "digits"
    # config.json keeps the options given (no data set); record.json names the data set trained on, which a resume may name.
    assert json.loads((out / "config.json").read_text())["data"] is None
    assert json.loads((out / "record.json").read_text())["data"] == "digits"
    main(["train", "--latent", autoencoder_run, "--data", "digits", "--steps", "4", "--out", str(out)])
    assert list_checkpoints(str(out))[-1][0] == 4


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vq") / "vq"
    with one_torch_thread():
        train_model(ModelConfig(kind="autoencoder", name="vq", options={"channels": 8, "latent_channels": 2, "num_codes": 8},
                                data="digits", steps=2, batch=16, checkpoint_every=2, out=str(out)), progress=False, device="cpu")
    return str(out)


def test_a_vq_autoencoder_has_no_sample_mode_and_says_so_in_one_line(tmp_path, vq_run, capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "--latent", vq_run, "--latent-mode", "sample", "--data", "digits", "--data-size", "64", "--steps", "1",
              "--out", str(tmp_path / "latent")])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "--latent-mode sample" in err and "VQAutoencoder" in err and "--latent-mode mean" in err
    assert not (tmp_path / "latent").exists()


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_a_bit(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # inside the stored latents: the member's CRC-32 no longer matches
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _flip_a_bit], ids=["truncated", "bit-flipped"])
def test_a_damaged_latent_cache_is_encoded_again_on_resume(tmp_path, autoencoder_run, damage):
    out = tmp_path / "latent"
    train(latent_config(out, autoencoder_run, steps=2, checkpoint_every=2), progress=False, device="cpu")
    with np.load(out / "latents.npz") as cache:
        original = cache["latents"].copy()
    damage(out / "latents.npz")
    train(latent_config(out, autoencoder_run), progress=False, device="cpu")
    assert list_checkpoints(str(out))[-1][0] == 4
    with np.load(out / "latents.npz") as cache:  # written again, with the same latents
        assert np.array_equal(cache["latents"], original)


def test_a_latent_run_samples_from_another_working_directory(tmp_path, autoencoder_run, monkeypatch):
    (tmp_path / "work").mkdir()
    (tmp_path / "elsewhere").mkdir()
    shutil.copytree(autoencoder_run, tmp_path / "work" / "ae")
    monkeypatch.chdir(tmp_path / "work")
    train(latent_config("lat", "ae", steps=2, checkpoint_every=2), progress=False, device="cpu")  # relative paths
    assert read_run_config("lat").latent_space["run"] == "../ae"
    monkeypatch.chdir(tmp_path / "elsewhere")
    main(["sample", "--ckpt", "../work/lat", "--n", "2", "--steps", "2", "--out", "s.npz"])
    assert np.load("s.npz")["samples"].shape == (2, 1, 8, 8)


def test_an_autoencoder_still_training_keeps_the_checkpoint_a_latent_run_recorded(tmp_path):
    ae = str(tmp_path / "ae")
    config = ModelConfig(kind="autoencoder", name="kl", options={"channels": 8, "latent_channels": 2}, data="digits", data_size=64,
                         steps=2, batch=16, checkpoint_every=2, keep_checkpoints=1, out=ae)
    train_model(config, progress=False, device="cpu")
    out = tmp_path / "latent"
    train(latent_config(out, ae, steps=2, checkpoint_every=2), progress=False, device="cpu")
    assert read_run_config(str(out)).latent_space["step"] == 2
    train_model(ModelConfig(**{**config.to_json(), "steps": 6}), progress=False, device="cpu")  # the autoencoder goes on
    assert [step for step, _ in list_checkpoints(ae)] == [2, 6]  # keep_checkpoints=1, and the pinned step 2
    main(["sample", "--ckpt", str(out), "--n", "2", "--steps", "2", "--out", str(tmp_path / "s.npz")])
    assert np.load(tmp_path / "s.npz")["samples"].shape == (2, 1, 8, 8)
    shutil.rmtree(out)  # the latent run is gone: its pin no longer holds
    train_model(ModelConfig(**{**config.to_json(), "steps": 8}), progress=False, device="cpu")
    assert [step for step, _ in list_checkpoints(ae)] == [8]
