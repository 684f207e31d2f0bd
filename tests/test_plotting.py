"""Tests for edm_space.plotting, read back with a PNG decoder written here."""

import os
import struct
import zlib

import numpy as np
import pytest
import torch

from edm_space import plotting


def decode_png(path):
    """Minimal independent PNG reader: 8-bit gray or RGB, filter type 0, no interlace.

    Checks the signature and every chunk's CRC; returns a uint8 [H, W] or [H, W, 3] array.
    """
    with open(path, "rb") as f:
        blob = f.read()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(blob):
        (length,) = struct.unpack(">I", blob[pos : pos + 4])
        kind = blob[pos + 4 : pos + 8]
        payload = blob[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", blob[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + payload) & 0xFFFFFFFF, kind
        chunks.append((kind, payload))
        pos += 12 + length
    assert pos == len(blob)
    kinds = [k for k, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    w, h, depth, ctype, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, comp, filt, interlace) == (8, 0, 0, 0)
    channels = {0: 1, 2: 3}[ctype]
    raw = zlib.decompress(b"".join(p for k, p in chunks if k == b"IDAT"))
    stride = w * channels + 1
    assert len(raw) == h * stride
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(h, stride)
    assert (rows[:, 0] == 0).all()  # filter type 0: the bytes are the pixels
    img = rows[:, 1:].reshape(h, w, channels)
    return img[:, :, 0] if channels == 1 else img


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (5, 9, 3), (1, 4, 3)])
def test_write_png_roundtrip(tmp_path, shape):
    img = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    path = tmp_path / "a.png"
    plotting.write_png(path, img)
    out = decode_png(path)
    assert out.shape == img.shape and np.array_equal(out, img)
    assert os.listdir(tmp_path) == ["a.png"]  # no temporary file left behind


def test_write_png_rejects_bad_input(tmp_path):
    for bad in [np.zeros((4, 4), np.float32), np.zeros((4, 4, 2), np.uint8), np.zeros((0, 3), np.uint8)]:
        with pytest.raises(ValueError) as e:
            plotting.write_png(tmp_path / "b.png", bad)
        assert "\n" not in str(e.value)
    assert not os.listdir(tmp_path)


def test_write_png_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    plotting.write_png(path, np.full((3, 3), 9, np.uint8))
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        plotting.write_png(path, np.zeros((3, 3), np.uint8))
    assert path.read_bytes() == before  # old picture intact
    assert os.listdir(tmp_path) == ["a.png"]  # temporary file removed


def _non_frame(img):
    return img[1:-1, 1:-1]


def test_scatter_single_point_pixel(tmp_path):
    path = tmp_path / "s.png"
    # extent 0..10 on both axes, 100 px: 10 px per unit, y up
    plotting.scatter_png(path, np.array([[2.55, 7.05]]), size=100, extent=(0, 10, 0, 10))
    img = decode_png(path)
    assert img.shape == (100, 100, 3)
    row, col = 29, 25  # floor((10 - 7.05) * 10), floor(2.55 * 10)
    dark = np.argwhere((img < 250).any(axis=2)[1:-1, 1:-1]) + 1
    assert dark.tolist() == [[row, col]]
    assert img[row, col].max() < 128  # a dark point
    inner = _non_frame(img).copy()
    inner[row - 1, col - 1] = 255
    assert (inner == 255).all()  # white background
    frame = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    assert ((frame > 150) & (frame < 255)).all()  # light frame


def test_scatter_drops_non_finite_and_accepts_tensors(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    pts = np.array([[0.3, 0.4], [np.nan, 1.0], [np.inf, 0.0], [0.1, -np.inf]])
    plotting.scatter_png(a, pts, size=32, extent=(-1, 1, -1, 1))
    plotting.scatter_png(b, torch.tensor([[0.3, 0.4]]), size=32, extent=(-1, 1, -1, 1))
    assert np.array_equal(decode_png(a), decode_png(b))


def test_scatter_auto_extent_frames_data(tmp_path):
    path = tmp_path / "s.png"
    pts = np.random.default_rng(1).normal(size=(5000, 2)) * [3.0, 1.0] + [10.0, -5.0]
    plotting.scatter_png(path, pts, size=64)
    img = decode_png(path)
    ink = (img < 250).any(axis=2)[1:-1, 1:-1]
    rows, cols = np.nonzero(ink)
    # the cloud is centred and wider than tall; it does not touch the border
    assert abs(cols.mean() - 31) < 3 and abs(rows.mean() - 31) < 3
    assert np.ptp(cols) > 1.8 * np.ptp(rows)
    xmin, xmax, ymin, ymax = plotting.auto_extent(pts)
    assert xmax - xmin == pytest.approx(ymax - ymin)
    assert xmin < np.percentile(pts[:, 0], 1) and xmax > np.percentile(pts[:, 0], 99)


@pytest.mark.parametrize("bad", [np.zeros((0, 2)), [], np.zeros((3, 3)), np.full((2, 2), np.nan)])
def test_scatter_errors_are_one_line(tmp_path, bad):
    with pytest.raises(ValueError) as e:
        plotting.scatter_png(tmp_path / "s.png", bad)
    assert "\n" not in str(e.value)
    assert not os.listdir(tmp_path)


def test_scatter_bad_extent(tmp_path):
    with pytest.raises(ValueError, match="extent"):
        plotting.scatter_png(tmp_path / "s.png", [[0, 0]], extent=(1, 0, 0, 1))


def test_scatter_panels_share_extent(tmp_path):
    path = tmp_path / "p.png"
    size = 40
    first = np.array([[0.0, 0.0], [1.0, 1.0], [-1.0, -1.0]])
    second = np.array([[0.0, 0.0], [np.nan, 0.0]])
    plotting.scatter_panels_png(path, [first, torch.tensor(second)], size=size)
    img = decode_png(path)
    gap = (img.shape[1] - 2 * size)
    assert img.shape[0] == size and gap > 0
    left, right = img[:, :size], img[:, size + gap :]
    assert (img[:, size : size + gap] == 255).all()  # white gap
    ink_l = np.argwhere((left < 250).any(axis=2)[1:-1, 1:-1]) + 1
    ink_r = np.argwhere((right < 250).any(axis=2)[1:-1, 1:-1]) + 1
    assert len(ink_l) == 3 and len(ink_r) == 1
    # (0, 0) lands on the same pixel in both panels: one shared extent
    assert ink_r.tolist()[0] in ink_l.tolist()
    with pytest.raises(ValueError, match=r"panels\[1\]"):
        plotting.scatter_panels_png(path, [first, np.zeros((0, 2))])
    with pytest.raises(ValueError):
        plotting.scatter_panels_png(path, [])


def test_image_grid_layout(tmp_path):
    path = tmp_path / "g.png"
    n, h, w = 5, 8, 16
    levels = np.linspace(-1, 1, n)
    images = np.ones((n, 3, h, w)) * levels[:, None, None, None]
    images[:, 1] = 0.0  # green channel mid-gray
    images[3, 0, 0, 0] = np.nan
    plotting.image_grid_png(path, images, ncols=3)
    img = decode_png(path)
    f = 8  # ceil(64 / min(8, 16))
    th, tw = h * f, w * f
    gap = (img.shape[1] - 3 * tw) // 4
    assert img.shape == (2 * th + 3 * gap, 3 * tw + 4 * gap, 3)
    for k in range(n):
        r, c = divmod(k, 3)
        top, left = gap + r * (th + gap), gap + c * (tw + gap)
        tile = img[top : top + th, left : left + tw]
        expect = round((levels[k] + 1) * 127.5)
        if k == 3:
            assert (tile[:f, :f, 0] == 128).all()  # NaN drawn as 0 -> mid-gray
            tile = tile[f:]
        assert (tile[..., 0] == expect).all() and (tile[..., 2] == expect).all(), k
        assert (tile[..., 1] == 128).all()
    # the empty sixth slot stays white
    assert (img[gap + th + gap :, gap + 2 * (tw + gap) :] == 255).all()


def test_image_grid_gray_and_default_cols(tmp_path):
    path = tmp_path / "g.png"
    images = torch.linspace(-1, 1, 4 * 64 * 64).reshape(4, 1, 64, 64)
    plotting.image_grid_png(path, images)
    img = decode_png(path)
    assert img.ndim == 2  # gray
    gap = (img.shape[1] - 2 * 64) // 3
    assert img.shape == (2 * 64 + 3 * gap, 2 * 64 + 3 * gap)
    assert img[gap, gap] == 0 and img[-gap - 1, -gap - 1] == 255


@pytest.mark.parametrize(
    "images, kw",
    [(np.zeros((0, 1, 4, 4)), {}), (np.zeros((2, 2, 4, 4)), {}), (np.zeros((4, 4)), {}), (np.zeros((2, 1, 4, 4)), {"ncols": 0})],
)
def test_image_grid_errors(tmp_path, images, kw):
    with pytest.raises(ValueError) as e:
        plotting.image_grid_png(tmp_path / "g.png", images, **kw)
    assert "\n" not in str(e.value)
    assert not os.listdir(tmp_path)
