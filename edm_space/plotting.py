"""Pictures without a plotting library: PNG files from numpy, zlib and struct.

    write_png("a.png", uint8_image)                 # [H, W] gray or [H, W, 3] RGB
    scatter_png("moons.png", points)                # a 2-D point cloud as a density image
    scatter_panels_png("cmp.png", [data, samples])  # panels side by side, one extent
    image_grid_png("grid.png", images)              # [n, C, H, W] in [-1, 1] as a grid

Every file is written atomically (a temporary file in the same directory, then
``os.replace``), so a reader never sees a half-written picture. No text is drawn.
Extents follow matplotlib's order ``(xmin, xmax, ymin, ymax)``, with y pointing up.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from typing import Optional, Sequence, Tuple

import numpy as np

from .files import write_atomic

__all__ = [
    "write_png",
    "encode_png",
    "scatter_png",
    "scatter_panels_png",
    "image_grid_png",
    "auto_extent",
    "pixel_of",
    "grid_layout",
    "tile_origin",
]

Extent = Tuple[float, float, float, float]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_WHITE = np.array([255, 255, 255], dtype=np.float64)
_INK = np.array([16, 32, 96], dtype=np.float64)  # dark blue for the points
_FRAME = np.array([200, 200, 200], dtype=np.uint8)  # light gray frame
_PANEL_GAP = 8  # px of white between scatter panels
_GRID_GAP = 2  # px of white around and between grid tiles
_MIN_TILE = 64  # grid tiles are upsampled to at least this many px


# ---------------------------------------------------------------------------
# PNG encoding


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def encode_png(image: np.ndarray) -> bytes:
    """The bytes of a PNG file holding ``image`` (uint8, [H, W] or [H, W, 3])."""
    img = _check_image(image)
    h, w = img.shape[:2]
    color_type = 0 if img.ndim == 2 else 2  # 0: gray, 2: RGB; 8 bits per sample
    rows = img.reshape(h, -1)
    raw = np.empty((h, rows.shape[1] + 1), dtype=np.uint8)
    raw[:, 0] = 0  # filter type 0 (None) on every scanline
    raw[:, 1:] = rows
    ihdr = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return (
        _PNG_SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + _chunk(b"IEND", b"")
    )


def _check_image(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"image must have dtype uint8, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise ValueError(f"image must have shape [H, W] or [H, W, 3], got {list(img.shape)}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"image must be at least 1x1 pixels, got {list(img.shape)}")
    return np.ascontiguousarray(img)


def write_png(path: "str | os.PathLike[str]", image: np.ndarray) -> None:
    """Write a uint8 image, [H, W] gray or [H, W, 3] RGB, to ``path`` as a PNG.

    The file is written to a temporary file in the same directory and moved into
    place with ``os.replace``: ``path`` holds either its old content or the whole
    new picture, never a part. Raises ValueError for a wrong dtype or shape.
    """
    write_atomic(path, encode_png(image))


# ---------------------------------------------------------------------------
# Scatter plots


def _as_points(points: object, what: str = "points") -> np.ndarray:
    """[n, 2] float64 array of the finite rows of ``points``; ValueError if empty."""
    if hasattr(points, "detach"):  # a torch tensor, without importing torch
        points = points.detach().cpu().numpy()
    try:
        p = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a numeric [n, 2] array, got {type(points).__name__}") from None
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"{what} must have shape [n, 2], got {list(p.shape)}")
    if p.shape[0] == 0:
        raise ValueError(f"{what} is empty: nothing to plot")
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
        raise ValueError("no finite points to choose an extent from; pass extent=")
    (x0, y0), (x1, y1) = np.percentile(p, [lo, hi], axis=0)
    span = max(x1 - x0, y1 - y0)
    half = span * (0.5 + pad) if span > 0 else 1.0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (float(cx - half), float(cx + half), float(cy - half), float(cy + half))


def _check_extent(extent: object) -> Extent:
    try:
        e = tuple(float(v) for v in extent)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"extent must be (xmin, xmax, ymin, ymax), got {extent!r}") from None
    if len(e) != 4 or not all(math.isfinite(v) for v in e) or not (e[0] < e[1] and e[2] < e[3]):
        raise ValueError(f"extent must be finite (xmin, xmax, ymin, ymax) with xmin < xmax and ymin < ymax, got {extent!r}")
    return e  # type: ignore[return-value]


def _check_size(size: object, what: str = "size") -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 8 <= size <= 8192:
        raise ValueError(f"{what} must be an integer in [8, 8192], got {size!r}")
    return int(size)


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


def scatter_png(
    path: "str | os.PathLike[str]",
    points: object,
    size: int = 512,
    extent: Optional[Sequence[float]] = None,
    title: Optional[str] = None,
) -> None:
    """Write a 2-D point cloud as a size x size density picture.

    Points are dark on white; a pixel's darkness grows with the log of the
    number of points on it, and a light frame marks the plot's border. Rows with
    a NaN or an infinity are dropped; points outside the extent are not drawn.

    Args:
        points: [n, 2] numpy array or torch tensor (n >= 1).
        size: side of the square picture in pixels.
        extent: (xmin, xmax, ymin, ymax); None picks a square box around the
            0.5-99.5 percentiles of the data, padded by 10 % (:func:`auto_extent`).
        title: accepted for call compatibility; text is not drawn.

    Raises:
        ValueError: empty or wrongly shaped points, a bad size or extent, or no
        finite point when the extent must be chosen from the data.
    """
    del title  # no text rendering
    size = _check_size(size)
    p = _as_points(points)
    ext = _extent_of(p) if extent is None else _check_extent(extent)
    write_png(path, _render_scatter(p, ext, size))


def scatter_panels_png(
    path: "str | os.PathLike[str]",
    panels: Sequence[object],
    size: int = 320,
    extent: Optional[Sequence[float]] = None,
) -> None:
    """Write several scatter panels side by side with one shared extent.

    Each panel is drawn as by :func:`scatter_png` at size x size pixels, with
    ``_PANEL_GAP`` (8) white pixels between neighbours. With ``extent=None`` the
    extent is chosen from all panels' finite points together, so the panels
    are directly comparable; a panel with no finite point is drawn empty.

    Raises:
        ValueError: no panels, an empty or wrongly shaped panel (named by its
        index), a bad size or extent, or no finite point at all with extent=None.
    """
    if isinstance(panels, np.ndarray) or hasattr(panels, "detach") or len(panels) == 0:
        raise ValueError("panels must be a non-empty list of [n, 2] point arrays")
    size = _check_size(size)
    pts = [_as_points(p, what=f"panels[{i}]") for i, p in enumerate(panels)]
    if extent is None:
        ext = _extent_of(np.concatenate(pts, axis=0))
    else:
        ext = _check_extent(extent)
    k = len(pts)
    canvas = np.full((size, k * size + (k - 1) * _PANEL_GAP, 3), 255, dtype=np.uint8)
    for i, p in enumerate(pts):
        x0 = i * (size + _PANEL_GAP)
        canvas[:, x0 : x0 + size] = _render_scatter(p, ext, size)
    write_png(path, canvas)


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
        raise ValueError(f"ncols must be an integer >= 1 or None, got {ncols!r}")
    ncols = min(int(ncols), n)
    nrows = math.ceil(n / ncols)
    factor = max(1, math.ceil(_MIN_TILE / min(height, width)))
    return ncols, nrows, factor


def tile_origin(k: int, ncols: int, tile_h: int, tile_w: int) -> Tuple[int, int]:
    """(top, left) pixel of tile k in a grid of (upsampled) tile_h x tile_w tiles."""
    r, c = divmod(k, ncols)
    return _GRID_GAP + r * (tile_h + _GRID_GAP), _GRID_GAP + c * (tile_w + _GRID_GAP)


def image_grid_png(path: "str | os.PathLike[str]", images: object, ncols: Optional[int] = None) -> None:
    """Write images [n, C, H, W] with values in [-1, 1] as a grid picture.

    C is 1 (gray) or 3 (RGB). Image k goes to row k // ncols, column k % ncols;
    each is upsampled by nearest neighbour by the smallest integer factor that
    makes it at least 64 px on each side, and tiles are separated by 2 white
    pixels. Values are mapped from [-1, 1] to [0, 255] and clipped; NaN becomes
    0 (mid-gray) and +-inf the ends of the range.

    Raises:
        ValueError: an empty batch, a wrong shape or channel count, a bad ncols.
    """
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    try:
        x = np.asarray(images, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"images must be a numeric [n, C, H, W] array, got {type(images).__name__}") from None
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape [n, C, H, W] with C = 1 or 3, got {list(x.shape)}")
    n, ch, h, w = x.shape
    if n == 0 or h == 0 or w == 0:
        raise ValueError(f"images is empty: shape {list(x.shape)}")
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
    write_png(path, canvas[..., 0] if ch == 1 else canvas)


def have_matplotlib() -> bool:
    """Whether the optional [plot] extra (matplotlib) is installed."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def line_plot_png(
    path: "str | os.PathLike[str]",
    series: "dict",
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = True,
    logy: bool = True,
) -> None:
    """A line plot (matplotlib, the optional [plot] extra) of {label: (xs, ys[, yerr])}, written atomically."""
    if not have_matplotlib():
        raise ValueError("line plots need the optional package matplotlib: pip install -e .[plot]")
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for label, values in series.items():
        xs, ys = values[0], values[1]
        yerr = values[2] if len(values) > 2 else None
        ax.errorbar(xs, ys, yerr=yerr, marker="o", markersize=3, capsize=2, label=label)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
