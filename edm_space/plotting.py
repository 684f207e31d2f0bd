"""Pictures with Pillow: point clouds, image grids and sampling trajectories, labelled.

    write_png("a.png", uint8_image)                          # [H, W] gray or [H, W, 3] RGB
    scatter_png("moons.png", points, label="samples")        # a 2-D point cloud as a density image
    scatter_panels_png("cmp.png", [data, samples], labels=["data", "samples"])  # one shared extent
    image_grid_png("grid.png", images, caption="edm + heun, 18 steps")        # [n, C, H, W] in [-1, 1]
    trajectory_png("traj.png", sigma, frames)                 # frames picked evenly, each "sigma = ..."

The pixels are computed with numpy (a density rasterizer for points, a nearest
neighbour tiler for images); captions are drawn with Pillow's ImageDraw in
Pillow's own default font, in a white band above each panel, so a caption never
covers a pixel of the picture below it. Every file is encoded by Pillow into
memory and then written atomically (:func:`edm_space.files.write_atomic`), so a
reader never sees a half-written picture. Extents follow matplotlib's order
``(xmin, xmax, ymin, ymax)``, with y pointing up. Bad arguments raise
:class:`~edm_space.errors.ConfigError` (a ValueError) with a one-line message.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import math
import os
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import ConfigError
from .files import write_atomic

__all__ = [
    "write_png",
    "scatter_png",
    "scatter_panels_png",
    "image_grid_png",
    "trajectory_png",
    "frame_indices",
    "auto_extent",
    "pixel_of",
    "grid_layout",
    "tile_origin",
    "caption_font",
    "have_matplotlib",
]

Extent = Tuple[float, float, float, float]
Font = Union[ImageFont.FreeTypeFont, ImageFont.ImageFont]

_WHITE = np.array([255, 255, 255], dtype=np.float64)
_INK = np.array([16, 32, 96], dtype=np.float64)  # dark blue for the points
_FRAME = np.array([200, 200, 200], dtype=np.uint8)  # light gray frame
_PANEL_GAP = 8  # px of white between panels side by side
_GRID_GAP = 2  # px of white around and between grid tiles
_MIN_TILE = 64  # grid tiles are upsampled to at least this many px
_CAPTION_SIZE = 14  # px, the caption font's size where Pillow can scale its default font
_CAPTION_PAD = 4  # px of white above, below and beside a caption


# ---------------------------------------------------------------------------
# Writing pictures


def _check_image(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ConfigError(f"image must have dtype uint8, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise ConfigError(f"image must have shape [H, W] or [H, W, 3], got {list(img.shape)}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ConfigError(f"image must be at least 1x1 pixels, got {list(img.shape)}")
    return np.ascontiguousarray(img)


def _save(path: "str | os.PathLike[str]", picture: Image.Image) -> None:
    """Encode ``picture`` as PNG in memory, then write it to ``path`` atomically."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())


def write_png(path: "str | os.PathLike[str]", image: np.ndarray) -> None:
    """Write a uint8 image, [H, W] gray or [H, W, 3] RGB, to ``path`` as a PNG.

    ``path`` holds either its old content or the whole new picture, never a part.
    Raises ConfigError for a wrong dtype or shape.
    """
    _save(path, Image.fromarray(_check_image(image)))


# ---------------------------------------------------------------------------
# Captions


@functools.lru_cache(maxsize=None)
def caption_font() -> Font:
    """The font captions are drawn in: Pillow's default font, nothing downloaded.

    With FreeType (every Pillow wheel) that is Pillow's bundled Aileron scaled to
    14 px; a Pillow built without FreeType has only its fixed bitmap font.
    """
    try:
        return ImageFont.load_default(size=_CAPTION_SIZE)
    except ImportError:  # no FreeType: the bitmap font cannot be scaled
        return ImageFont.load_default()


def _band_height(font: Font) -> int:
    """Rows of the caption band: the tallest glyphs (ascender to descender) plus padding."""
    return int(font.getbbox("Agjy|")[3]) + 2 * _CAPTION_PAD


def _check_captions(captions: Optional[Sequence[object]], count: int, what: str) -> Optional[List[str]]:
    if captions is None:
        return None
    if isinstance(captions, str) or len(captions) != count:
        raise ConfigError(f"{what} must be a list of {count} strings, one per panel, got {captions!r}")
    text = [str(c) for c in captions]
    if any("\n" in t for t in text):
        raise ConfigError(f"{what} must be one line each, got {text!r}")
    return text


def _strip(panels: Sequence[np.ndarray], captions: Optional[Sequence[str]], gap: int = _PANEL_GAP) -> Image.Image:
    """Panels side by side, ``gap`` white px apart, each under its caption when given.

    Without captions the panels are simply abutted with white gaps. With them, a
    white band as tall as the font runs across the top; each panel gets a cell as
    wide as the wider of the panel and its caption, the panel centred in the cell
    below the band and the caption centred in the band above it. The panels'
    pixels are copied unchanged.
    """
    cells = [p.shape[1] for p in panels]
    band, boxes = 0, []
    if captions is not None:
        font = caption_font()
        band = _band_height(font)
        boxes = [font.getbbox(text) for text in captions]
        cells = [max(w, _width(box) + 2 * _CAPTION_PAD) for w, box in zip(cells, boxes)]
    height = band + max(p.shape[0] for p in panels)
    canvas = np.full((height, sum(cells) + gap * (len(panels) - 1)) + panels[0].shape[2:], 255, dtype=np.uint8)
    lefts = [sum(cells[:j]) + j * gap for j in range(len(cells))]
    for panel, left, cell in zip(panels, lefts, cells):
        x0 = left + (cell - panel.shape[1]) // 2
        canvas[band : band + panel.shape[0], x0 : x0 + panel.shape[1]] = panel
    picture = Image.fromarray(canvas)
    if captions is not None:
        draw = ImageDraw.Draw(picture)
        for text, box, left, cell in zip(captions, boxes, lefts, cells):
            # an integer origin, so the glyphs rasterize alike wherever a caption goes
            draw.text((left + (cell - _width(box)) // 2 - int(box[0]), _CAPTION_PAD), text, fill="black", font=font)
    return picture


def _width(box: Tuple[float, float, float, float]) -> int:
    """Whole pixels spanned by a text bounding box (left, top, right, bottom)."""
    return int(math.ceil(box[2] - box[0]))


# ---------------------------------------------------------------------------
# Scatter plots


def _as_points(points: object, what: str = "points") -> np.ndarray:
    """[n, 2] float64 array of the finite rows of ``points``; ConfigError if empty."""
    if hasattr(points, "detach"):  # a torch tensor, without importing torch
        points = points.detach().cpu().numpy()
    try:
        p = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a numeric [n, 2] array, got {type(points).__name__}") from None
    if p.ndim != 2 or p.shape[1] != 2:
        raise ConfigError(f"{what} must have shape [n, 2], got {list(p.shape)}")
    if p.shape[0] == 0:
        raise ConfigError(f"{what} is empty: nothing to plot")
    return p[np.isfinite(p).all(axis=1)]


def auto_extent(points: object, lo: float = 0.5, hi: float = 99.5, pad: float = 0.1) -> Extent:
    """A square extent (xmin, xmax, ymin, ymax) that frames ``points``.

    The box spans the [lo, hi] percentiles of each coordinate over the finite
    rows, widened by ``pad`` times its size on every side, then made square
    (the larger side, centred) so that the picture keeps the data's aspect
    ratio. Points that all coincide get a box of side 2 around them.
    """
    return _extent_of(_as_points(points), lo, hi, pad)


def _extent_of(p: np.ndarray, lo: float = 0.5, hi: float = 99.5, pad: float = 0.1) -> Extent:
    if p.shape[0] == 0:
        raise ConfigError("no finite points to choose an extent from; pass extent=")
    (x0, y0), (x1, y1) = np.percentile(p, [lo, hi], axis=0)
    span = max(x1 - x0, y1 - y0)
    half = span * (0.5 + pad) if span > 0 else 1.0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (float(cx - half), float(cx + half), float(cy - half), float(cy + half))


def _check_extent(extent: object) -> Extent:
    try:
        e = tuple(float(v) for v in extent)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ConfigError(f"extent must be (xmin, xmax, ymin, ymax), got {extent!r}") from None
    if len(e) != 4 or not all(math.isfinite(v) for v in e) or not (e[0] < e[1] and e[2] < e[3]):
        raise ConfigError(f"extent must be finite (xmin, xmax, ymin, ymax) with xmin < xmax and ymin < ymax, got {extent!r}")
    return e  # type: ignore[return-value]


def _check_count(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ConfigError(f"{what} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def pixel_of(x: float, y: float, extent: Extent, size: int) -> Tuple[int, int]:
    """The (row, col) of the pixel that a point (x, y) falls on in a size x size plot."""
    xmin, xmax, ymin, ymax = extent
    col = min(int(math.floor((x - xmin) / (xmax - xmin) * size)), size - 1)
    row = min(int(math.floor((ymax - y) / (ymax - ymin) * size)), size - 1)
    return row, col


def _render_scatter(p: np.ndarray, extent: Extent, size: int) -> np.ndarray:
    """RGB uint8 [size, size, 3] density image of the finite points ``p``."""
    xmin, xmax, ymin, ymax = extent
    inside = (p[:, 0] >= xmin) & (p[:, 0] <= xmax) & (p[:, 1] >= ymin) & (p[:, 1] <= ymax)
    q = p[inside]
    col = np.minimum(np.floor((q[:, 0] - xmin) / (xmax - xmin) * size), size - 1).astype(np.int64)
    row = np.minimum(np.floor((ymax - q[:, 1]) / (ymax - ymin) * size), size - 1).astype(np.int64)
    counts = np.bincount(row * size + col, minlength=size * size).reshape(size, size)
    # darkness: any occupied pixel at least 35 % ink, rising with log density
    dark = np.zeros((size, size), dtype=np.float64)
    top = counts.max() if counts.size else 0
    if top > 0:
        hit = counts > 0
        dark[hit] = 0.35 + 0.65 * np.log1p(counts[hit]) / np.log1p(top)
    img = _WHITE * (1.0 - dark[..., None]) + _INK * dark[..., None]
    img = np.rint(img).astype(np.uint8)
    # light frame on the border pixels, under the points
    border = np.zeros((size, size), dtype=bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    img[border & (counts == 0)] = _FRAME
    return img


def _scatter_strip(
    clouds: Sequence[np.ndarray], size: int, extent: Optional[Sequence[float]], labels: Optional[Sequence[str]]
) -> Image.Image:
    """Finite point clouds as size x size panels with one extent (chosen from all when None)."""
    ext = _extent_of(np.concatenate(clouds, axis=0)) if extent is None else _check_extent(extent)
    return _strip([_render_scatter(p, ext, size) for p in clouds], labels)


def scatter_png(
    path: "str | os.PathLike[str]",
    points: object,
    size: int = 512,
    extent: Optional[Sequence[float]] = None,
    label: Optional[str] = None,
) -> None:
    """Write a 2-D point cloud as a size x size density picture, captioned ``label`` if given.

    Points are dark on white; a pixel's darkness grows with the log of the
    number of points on it, and a light frame marks the plot's border. Rows with
    a NaN or an infinity are dropped; points outside the extent are not drawn.

    Args:
        points: [n, 2] numpy array or torch tensor (n >= 1).
        size: side of the square plot in pixels.
        extent: (xmin, xmax, ymin, ymax); None picks a square box around the
            0.5-99.5 percentiles of the data, padded by 10 % (:func:`auto_extent`).
        label: a one-line caption drawn in a band above the plot.

    Raises:
        ConfigError: empty or wrongly shaped points, a bad size or extent, or no
        finite point when the extent must be chosen from the data.
    """
    size = _check_count(size, "size", 8, 8192)
    labels = _check_captions(None if label is None else [label], 1, "label")
    _save(path, _scatter_strip([_as_points(points)], size, extent, labels))


def scatter_panels_png(
    path: "str | os.PathLike[str]",
    panels: Sequence[object],
    size: int = 320,
    extent: Optional[Sequence[float]] = None,
    labels: Optional[Sequence[str]] = None,
) -> None:
    """Write several scatter panels side by side with one shared extent.

    Each panel is drawn as by :func:`scatter_png` at size x size pixels, with
    8 white pixels between neighbours. With ``extent=None`` the extent is chosen
    from all panels' finite points together, so the panels are directly
    comparable; a panel with no finite point is drawn empty. ``labels`` (one
    string per panel, e.g. ``["data", "samples"]``) are drawn as captions above
    the panels.

    Raises:
        ConfigError: no panels, an empty or wrongly shaped panel (named by its
        index), a bad size, extent or labels, or no finite point at all with
        extent=None.
    """
    if isinstance(panels, np.ndarray) or hasattr(panels, "detach") or len(panels) == 0:
        raise ConfigError("panels must be a non-empty list of [n, 2] point arrays")
    size = _check_count(size, "size", 8, 8192)
    clouds = [_as_points(p, what=f"panels[{i}]") for i, p in enumerate(panels)]
    _save(path, _scatter_strip(clouds, size, extent, _check_captions(labels, len(clouds), "labels")))


# ---------------------------------------------------------------------------
# Image grids


def grid_layout(n: int, height: int, width: int, ncols: Optional[int] = None) -> Tuple[int, int, int]:
    """(ncols, nrows, factor) of the grid :func:`image_grid_png` draws.

    ``ncols`` defaults to ceil(sqrt(n)) and is capped at n; ``factor`` is the
    smallest integer upsampling that makes both tile sides at least 64 px.
    """
    if ncols is None:
        ncols = math.ceil(math.sqrt(n))
    elif isinstance(ncols, bool) or not isinstance(ncols, (int, np.integer)) or ncols < 1:
        raise ConfigError(f"ncols must be an integer >= 1 or None, got {ncols!r}")
    ncols = min(int(ncols), n)
    nrows = math.ceil(n / ncols)
    factor = max(1, math.ceil(_MIN_TILE / min(height, width)))
    return ncols, nrows, factor


def tile_origin(k: int, ncols: int, tile_h: int, tile_w: int) -> Tuple[int, int]:
    """(top, left) pixel of tile k in a grid of (upsampled) tile_h x tile_w tiles."""
    r, c = divmod(k, ncols)
    return _GRID_GAP + r * (tile_h + _GRID_GAP), _GRID_GAP + c * (tile_w + _GRID_GAP)


def _as_images(images: object, what: str = "images") -> np.ndarray:
    """float64 [n, C, H, W] with C in {1, 3} and n, H, W >= 1, from numpy or torch."""
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    try:
        x = np.asarray(images, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a numeric [n, C, H, W] array, got {type(images).__name__}") from None
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ConfigError(f"{what} must have shape [n, C, H, W] with C = 1 or 3, got {list(x.shape)}")
    if 0 in x.shape:
        raise ConfigError(f"{what} is empty: shape {list(x.shape)}")
    return x


def _render_grid(x: np.ndarray, ncols: Optional[int]) -> np.ndarray:
    """uint8 grid picture ([H, W] for gray images, [H, W, 3] for RGB) of images [n, C, H, W] in [-1, 1]."""
    n, ch, h, w = x.shape
    ncols, nrows, f = grid_layout(n, h, w, ncols)
    x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    u8 = np.rint(np.clip((x + 1.0) * 127.5, 0.0, 255.0)).astype(np.uint8)
    u8 = u8.repeat(f, axis=2).repeat(f, axis=3).transpose(0, 2, 3, 1)  # [n, H f, W f, C]
    th, tw = h * f, w * f
    canvas = np.full(
        (_GRID_GAP + nrows * (th + _GRID_GAP), _GRID_GAP + ncols * (tw + _GRID_GAP), ch), 255, dtype=np.uint8
    )
    for k in range(n):
        top, left = tile_origin(k, ncols, th, tw)
        canvas[top : top + th, left : left + tw] = u8[k]
    return canvas[..., 0] if ch == 1 else canvas


def image_grid_png(
    path: "str | os.PathLike[str]", images: object, ncols: Optional[int] = None, caption: Optional[str] = None
) -> None:
    """Write images [n, C, H, W] with values in [-1, 1] as a grid picture.

    C is 1 (gray, written as a gray PNG) or 3 (RGB). Image k goes to row
    k // ncols, column k % ncols; each is upsampled by nearest neighbour by the
    smallest integer factor that makes it at least 64 px on each side, and tiles
    are separated by 2 white pixels. Values are mapped from [-1, 1] to [0, 255]
    and clipped; NaN becomes 0 (mid-gray) and +-inf the ends of the range.
    ``caption``, if given, is drawn in a band above the grid.

    Raises:
        ConfigError: an empty batch, a wrong shape or channel count, a bad ncols
        or caption.
    """
    x = _as_images(images)
    captions = _check_captions(None if caption is None else [caption], 1, "caption")
    _save(path, _strip([_render_grid(x, ncols)], captions))


# ---------------------------------------------------------------------------
# Trajectories


def frame_indices(steps: int, most: int = 6) -> List[int]:
    """The ``min(most, steps)`` evenly spaced step indices a trajectory strip shows.

    Index j of k is round(j (steps - 1) / (k - 1)), so the first and the last
    step are always shown (one frame: the first).
    """
    steps = _check_count(steps, "steps", 1, 10**9)
    k = min(_check_count(most, "max_frames", 1, 10**6), steps)
    if k == 1:
        return [0]
    # spacing (steps - 1) / (k - 1) >= 1, so the rounded indices are distinct
    return [int(i) for i in np.rint(np.linspace(0, steps - 1, k))]


def _sigma_caption(sigma: float) -> str:
    return f"sigma = {sigma:.3g}"


def trajectory_png(
    path: "str | os.PathLike[str]",
    sigma: object,
    frames: object,
    max_frames: int = 6,
    images_per_frame: int = 8,
    size: int = 240,
    extent: Optional[Sequence[float]] = None,
) -> List[int]:
    """Write a strip of up to ``max_frames`` evenly spaced frames of a sampling trajectory.

    Each shown frame is one panel, captioned with its noise level
    ("sigma = 12.3"); :func:`frame_indices` picks the steps, first and last
    included. ``frames`` is either

    * 2-D points, [steps, batch, 2]: each frame a size x size scatter panel as in
      :func:`scatter_panels_png`, all panels sharing ``extent`` (None: chosen
      from all shown frames together), or
    * images, [steps, batch, C, H, W] with C in {1, 3} and values in [-1, 1]: each
      frame a column of its first ``images_per_frame`` images as in
      :func:`image_grid_png`, so that a row follows one image through sampling.

    Args:
        sigma: [steps] noise level of each frame (e.g. a trajectory recorder's sigma).
        frames: numpy array or torch tensor as above (e.g. the denoised estimates).

    Returns:
        The step indices shown, left to right.

    Raises:
        ConfigError: a wrong shape, sigma not of length steps, or a bad count.
    """
    if hasattr(frames, "detach"):
        frames = frames.detach().cpu().numpy()
    try:
        stack = np.asarray(frames, dtype=np.float64)
        levels = np.asarray(sigma.detach().cpu().numpy() if hasattr(sigma, "detach") else sigma, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError("trajectory_png needs numeric sigma [steps] and frames [steps, batch, ...]") from None
    points = stack.ndim == 3 and stack.shape[2] == 2
    if not (points or (stack.ndim == 5 and stack.shape[2] in (1, 3))) or 0 in stack.shape:
        raise ConfigError(
            f"frames must have shape [steps, batch, 2] or [steps, batch, C, H, W] with C = 1 or 3, got {list(stack.shape)}"
        )
    if levels.shape != (stack.shape[0],):
        raise ConfigError(f"sigma must have shape [{stack.shape[0]}] (one per frame), got {list(levels.shape)}")
    picks = frame_indices(stack.shape[0], max_frames)
    captions = [_sigma_caption(levels[i]) for i in picks]
    if points:
        size = _check_count(size, "size", 8, 8192)
        clouds = [_as_points(stack[i], what=f"frames[{i}]") for i in picks]
        picture = _scatter_strip(clouds, size, extent, captions)
    else:
        count = _check_count(images_per_frame, "images_per_frame", 1, 10**6)
        picture = _strip([_render_grid(stack[i, :count], ncols=1) for i in picks], captions)
    _save(path, picture)
    return picks


def have_matplotlib() -> bool:
    """Whether the optional [plot] extra (matplotlib) is installed."""
    return importlib.util.find_spec("matplotlib") is not None
