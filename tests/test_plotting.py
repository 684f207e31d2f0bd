"""edm_space.plotting: pictures read back with Pillow and checked pixel by pixel against hand-computed layouts."""

import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from edm_space import plotting
from edm_space.errors import ConfigError


def read_png(path):
    """The pixels of a PNG file and its Pillow mode."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image).copy(), image.mode


def gray(img):
    """One channel of a picture whose ink is gray (R = G = B)."""
    return img if img.ndim == 2 else img[..., 0]


def ink_crop(gray_img, threshold=250):
    """The smallest box around every pixel darker than `threshold`."""
    rows, cols = np.nonzero(gray_img < threshold)
    assert len(rows), "no ink"
    return gray_img[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def text_ink(text):
    """`text` drawn by Pillow alone in the captions' font, black on white, cropped to its ink."""
    canvas = Image.new("L", (400, 60), 255)
    ImageDraw.Draw(canvas).text((20, 10), text, fill=0, font=plotting.caption_font())
    return ink_crop(np.asarray(canvas))


# ---------------------------------------------------------------------------
# write_png


@pytest.mark.parametrize("shape, mode", [((1, 1), "L"), ((7, 13), "L"), ((5, 9, 3), "RGB"), ((1, 4, 3), "RGB")])
def test_write_png_roundtrip(tmp_path, shape, mode):
    img = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    path = tmp_path / "a.png"
    plotting.write_png(path, img)
    out, out_mode = read_png(path)
    assert out_mode == mode and out.shape == img.shape and np.array_equal(out, img)
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


# ---------------------------------------------------------------------------
# Scatter plots


def _non_frame(img):
    return img[1:-1, 1:-1]


def test_scatter_single_point_lands_on_the_hand_computed_pixel(tmp_path):
    path = tmp_path / "s.png"
    # extent 0..10 on both axes, 100 px: 10 px per unit, y up
    row, col = 29, 25  # floor((10 - 7.05) * 10), floor(2.55 * 10)
    assert plotting.pixel_of(2.55, 7.05, (0, 10, 0, 10), 100) == (row, col)
    plotting.scatter_png(path, np.array([[2.55, 7.05]]), size=100, extent=(0, 10, 0, 10))
    img, mode = read_png(path)
    assert mode == "RGB" and img.shape == (100, 100, 3)
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
    assert np.array_equal(read_png(a)[0], read_png(b)[0])


def test_scatter_auto_extent_frames_data(tmp_path):
    path = tmp_path / "s.png"
    pts = np.random.default_rng(1).normal(size=(5000, 2)) * [3.0, 1.0] + [10.0, -5.0]
    plotting.scatter_png(path, pts, size=64)
    img = read_png(path)[0]
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
    with pytest.raises(ConfigError) as e:
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
    img = read_png(path)[0]
    gap = img.shape[1] - 2 * size
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


def test_scatter_panel_captions_ink_only_their_band(tmp_path):
    rng = np.random.default_rng(4)
    panels = [rng.normal(size=(300, 2)), rng.normal(size=(300, 2)) * 0.5]
    size = 160
    plain, labelled = tmp_path / "plain.png", tmp_path / "labelled.png"
    plotting.scatter_panels_png(plain, panels, size=size)
    plotting.scatter_panels_png(labelled, panels, size=size, labels=["data", "samples"])
    bare, img = read_png(plain)[0], read_png(labelled)[0]
    band = img.shape[0] - bare.shape[0]
    assert band > 0 and img.shape[1] == bare.shape[1]
    assert np.array_equal(img[band:], bare)  # the panels below the band are unchanged, pixel for pixel
    gap = bare.shape[1] - 2 * size
    caption_band = gray(img[:band])
    assert (img[:band] == img[:band, :, :1]).all()  # black text: gray levels only
    assert (caption_band[:, size : size + gap] == 255).all()  # nothing drawn between the panels
    for text, x0 in [("data", 0), ("samples", size + gap)]:
        above = caption_band[:, x0 : x0 + size]
        assert above.min() < 64  # dark ink above each panel
        assert np.array_equal(ink_crop(above), text_ink(text))  # ... that reads its label
    # the caption is at least 9 px tall: legible
    assert ink_crop(caption_band[:, :size]).shape[0] >= 9


def test_single_scatter_label_and_bad_labels(tmp_path):
    plotting.scatter_png(tmp_path / "s.png", [[0.0, 0.0]], size=120, extent=(-1, 1, -1, 1), label="samples")
    img = gray(read_png(tmp_path / "s.png")[0])
    band = img.shape[0] - 120
    assert band > 0 and np.array_equal(ink_crop(img[:band]), text_ink("samples"))
    for labels in (["only one"], "ab", ["a", "b", "c"], ["two\nlines", "b"]):
        with pytest.raises(ConfigError) as e:
            plotting.scatter_panels_png(tmp_path / "p.png", [[[0, 0]], [[1, 1]]], labels=labels)
        assert "\n" not in str(e.value)
    assert not (tmp_path / "p.png").exists()


# ---------------------------------------------------------------------------
# Image grids


def test_image_grid_tiles_hold_the_exact_images_where_the_layout_says(tmp_path):
    path = tmp_path / "g.png"
    n, h, w = 5, 8, 16
    rng = np.random.default_rng(2)
    levels = rng.integers(0, 256, size=(n, 3, h, w))
    images = levels / 127.5 - 1.0  # maps back to exactly these 0..255 levels
    images[3, :, 0, 0] = np.nan
    f = 8  # ceil(64 / min(8, 16)): the smallest integer upsampling to 64 px
    assert plotting.grid_layout(n, h, w, ncols=3) == (3, 2, f)
    plotting.image_grid_png(path, images, ncols=3)
    img, mode = read_png(path)
    gap, th, tw = 2, h * f, w * f
    assert mode == "RGB" and img.shape == (2 * th + 3 * gap, 3 * tw + 4 * gap, 3)
    for k in range(n):
        r, c = divmod(k, 3)
        top, left = gap + r * (th + gap), gap + c * (tw + gap)
        expected = np.kron(levels[k].transpose(1, 2, 0), np.ones((f, f, 1))).astype(np.uint8)
        if k == 3:
            expected[:f, :f] = 128  # NaN is drawn as 0, mid-gray
        assert np.array_equal(img[top : top + th, left : left + tw], expected), k
        assert (img[top - gap : top, left : left + tw] == 255).all()  # white gap above every tile
    # the empty sixth slot stays white
    assert (img[gap + th + gap :, gap + 2 * (tw + gap) :] == 255).all()


def test_image_grid_gray_and_default_cols(tmp_path):
    path = tmp_path / "g.png"
    images = torch.linspace(-1, 1, 4 * 64 * 64).reshape(4, 1, 64, 64)
    plotting.image_grid_png(path, images)
    img, mode = read_png(path)
    assert mode == "L" and img.ndim == 2  # gray
    gap = 2
    assert img.shape == (2 * 64 + 3 * gap, 2 * 64 + 3 * gap)
    assert img[gap, gap] == 0 and img[-gap - 1, -gap - 1] == 255


def test_image_grid_caption_inks_only_its_band(tmp_path):
    images = np.random.default_rng(3).uniform(-1, 1, size=(4, 1, 16, 16))
    plotting.image_grid_png(tmp_path / "plain.png", images)
    plotting.image_grid_png(tmp_path / "captioned.png", images, caption="samples")
    bare, img = read_png(tmp_path / "plain.png")[0], read_png(tmp_path / "captioned.png")[0]
    band = img.shape[0] - bare.shape[0]
    assert band > 0 and img.shape[1] == bare.shape[1] == 2 * 64 + 3 * 2
    assert np.array_equal(img[band:], bare)
    assert img[:band].min() < 64 and np.array_equal(ink_crop(img[:band]), text_ink("samples"))


def test_image_grid_caption_wider_than_the_grid_widens_the_picture(tmp_path):
    image = np.zeros((1, 1, 8, 8))  # one tile of 64 px, mid-gray, in a 68 px grid
    caption = "a caption much wider than one small tile"
    plotting.image_grid_png(tmp_path / "g.png", image, caption=caption)
    img = read_png(tmp_path / "g.png")[0]
    text = text_ink(caption)
    band = img.shape[0] - 68
    assert img.shape[1] >= text.shape[1] > 68
    assert np.array_equal(ink_crop(img[:band]), text)
    below = img[band:]
    cols = np.nonzero((below[2:66] == 128).all(axis=0))[0]
    assert len(cols) == 64 and np.ptp(cols) == 63  # the whole tile, in one piece
    tile = below[:, cols[0] - 2 : cols[0] + 66]
    expected = np.full((68, 68), 255, np.uint8)
    expected[2:66, 2:66] = 128
    assert np.array_equal(tile, expected)
    rest = np.delete(below, np.arange(cols[0] - 2, cols[0] + 66), axis=1)
    assert (rest == 255).all()


@pytest.mark.parametrize(
    "images, kw",
    [
        (np.zeros((0, 1, 4, 4)), {}),
        (np.zeros((2, 2, 4, 4)), {}),
        (np.zeros((4, 4)), {}),
        (np.zeros((2, 1, 4, 4)), {"ncols": 0}),
        (np.zeros((2, 1, 4, 4)), {"caption": "two\nlines"}),
    ],
)
def test_image_grid_errors(tmp_path, images, kw):
    with pytest.raises(ConfigError) as e:
        plotting.image_grid_png(tmp_path / "g.png", images, **kw)
    assert "\n" not in str(e.value)
    assert not os.listdir(tmp_path)


# ---------------------------------------------------------------------------
# Trajectories


def test_frame_indices_are_evenly_spaced_and_keep_both_ends():
    assert plotting.frame_indices(11, 6) == [0, 2, 4, 6, 8, 10]  # spacing 10 / 5 = 2
    assert plotting.frame_indices(18, 6) == [0, 3, 7, 10, 14, 17]  # 0, 3.4, 6.8, 10.2, 13.6, 17 rounded
    assert plotting.frame_indices(4, 6) == [0, 1, 2, 3]  # fewer steps than frames: all of them
    assert plotting.frame_indices(100, 2) == [0, 99]
    assert plotting.frame_indices(1) == [0]


def test_point_trajectory_has_one_captioned_panel_per_picked_frame(tmp_path):
    steps, size = 11, 110
    # frame i is one point at (i + 0.5, i + 0.5): in extent 0..11 at 10 px per unit it lands on
    # col floor((i + 0.5) * 10) = 10 i + 5, row floor((11 - i - 0.5) * 10) = 105 - 10 i
    frames = (np.arange(steps, dtype=np.float64)[:, None, None] + 0.5) * np.ones((1, 1, 2))
    sigma = np.array([80.0, 60.0, 12.3, 9.0, 2.5, 1.0, 0.5, 0.3, 0.1, 0.05, 0.0])
    picks = [0, 2, 4, 6, 8, 10]  # six of eleven, evenly: spacing 2
    captions = ["sigma = 80", "sigma = 12.3", "sigma = 2.5", "sigma = 0.5", "sigma = 0.1", "sigma = 0"]
    shown = plotting.trajectory_png(tmp_path / "t.png", torch.from_numpy(sigma), torch.from_numpy(frames),
                                    size=size, extent=(0, 11, 0, 11))
    assert shown == picks
    img = gray(read_png(tmp_path / "t.png")[0])
    band = img.shape[0] - size
    gap, rest = divmod(img.shape[1] - 6 * size, 5)  # six panels, equal gaps
    assert band > 0 and rest == 0 and gap > 0
    for j, (i, caption) in enumerate(zip(picks, captions)):
        x0 = j * (size + gap)
        panel = img[band:, x0 : x0 + size]
        dark = np.argwhere(panel[1:-1, 1:-1] < 250) + 1
        assert dark.tolist() == [[105 - 10 * i, 10 * i + 5]], j
        assert np.array_equal(ink_crop(img[:band, x0 : x0 + size]), text_ink(caption)), caption
        if j < 5:
            assert (img[:, x0 + size : x0 + size + gap] == 255).all()


def test_image_trajectory_shows_the_first_images_of_each_picked_frame_in_columns(tmp_path):
    steps, batch, shown_per_frame = 18, 10, 8

    def level(i, b):  # a distinct gray level for image b of frame i, never white
        return 10 + 12 * i + b

    u8 = np.array([[np.full((1, 8, 8), level(i, b)) for b in range(batch)] for i in range(steps)])
    frames = u8 / 127.5 - 1.0
    sigma = np.geomspace(80.0, 0.002, steps)
    picks = [0, 3, 7, 10, 14, 17]  # 17 / 5 = 3.4: 0, 3.4, 6.8, 10.2, 13.6, 17 rounded
    assert plotting.trajectory_png(tmp_path / "t.png", sigma, frames, images_per_frame=shown_per_frame) == picks
    img, mode = read_png(tmp_path / "t.png")
    assert mode == "L"
    column_height = 2 + shown_per_frame * (64 + 2)  # 8x8 images upsampled 8 times, 2 px gaps
    band = img.shape[0] - column_height
    assert band > 0
    below = img[band:]
    seen = set(np.unique(below).tolist()) - {255}
    assert seen == {level(i, b) for i in picks for b in range(shown_per_frame)}  # nothing else is drawn
    centres = []
    for i in picks:
        cols = np.nonzero(below[2 + 32] == level(i, 0))[0]
        assert len(cols) == 64 and np.ptp(cols) == 63, i
        for b in range(shown_per_frame):
            top = 2 + b * 66
            assert (below[top : top + 64, cols[0] : cols[0] + 64] == level(i, b)).all(), (i, b)
        assert img[:band, cols[0] : cols[0] + 64].min() < 64  # a caption above every column
        centres.append(cols[0])
    assert centres == sorted(centres)  # frames left to right in step order


def test_trajectory_errors_are_one_line(tmp_path):
    cases = [
        (np.ones(3), np.zeros((3, 4, 3))),  # neither points nor images
        (np.ones(2), np.zeros((3, 4, 2))),  # one sigma short
        (np.ones(3), np.zeros((3, 4, 2, 8, 8))),  # two channels
        (np.ones(0), np.zeros((0, 4, 2))),  # no frames
    ]
    for sigma, frames in cases:
        with pytest.raises(ConfigError) as e:
            plotting.trajectory_png(tmp_path / "t.png", sigma, frames)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="max_frames"):
        plotting.trajectory_png(tmp_path / "t.png", np.ones(3), np.zeros((3, 4, 2)), max_frames=0)
    assert not os.listdir(tmp_path)
