"""Procedural images of the synthetic world: one coloured shape on a textured background.

Everything is vectorised over images (in fixed-size chunks, to bound memory) and every random choice
comes from the caller's `np.random.Generator`, so the same generator state gives the same pixels.
Geometry is defined at 32 px and scaled with `size`.
"""

from __future__ import annotations

import numpy as np

from gcctl.errors import GcctlError

SHAPES = ("circle", "square", "triangle", "cross", "ring", "star")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
BACKGROUNDS = ("water", "grass", "sand", "snow", "forest", "sky")

MIN_SIZE = 16
_CHUNK = 2048  # images rendered at once: ~100 MB of float32 work arrays at 32 px

_COLOUR_RGB = np.array(
    [(220, 40, 40), (40, 175, 60), (40, 80, 225), (240, 215, 40), (145, 50, 185), (250, 140, 25)],
    dtype=np.float32,
)
_COLOUR_JITTER = 18  # per image and channel, so a colour is a region of RGB space, not one point
_PIXEL_NOISE = 4.0  # sensor-like noise over the whole image


def render(
    shapes,
    colours,
    backgrounds,
    rng: np.random.Generator,
    size: int = 32,
    cues=None,
    cue_size: float = 8.0,
    *,
    palette: np.ndarray | None = None,
    object_scale: float = 1.0,
    outline: bool = False,
) -> np.ndarray:
    """Render one image per index triple; returns uint8 [N, size, size, 3].

    `shapes`, `colours`, `backgrounds` are integer indices into SHAPES, COLOURS, BACKGROUNDS. `cues`, when
    given, are BACKGROUNDS indices too: each image gets a square patch of that texture, `cue_size` px wide
    at 32 px, in its top-left corner, under the object. Without cues the generator is used exactly as before.
    The keywords draw domain-shifted variants (the source world's shifts); they change no random draw, so
    their defaults leave every image as it was: `palette` replaces the colours' RGB values ([len(COLOURS), 3]),
    `object_scale` multiplies every shape's radius, `outline` keeps only a shape's boundary.
    """
    shapes, colours, backgrounds = (np.asarray(a, dtype=np.int64).reshape(-1) for a in (shapes, colours, backgrounds))
    if not len(shapes) == len(colours) == len(backgrounds):
        raise ValueError(f"index arrays differ in length: {len(shapes)}, {len(colours)}, {len(backgrounds)}")
    checks = (("shape", shapes, SHAPES), ("colour", colours, COLOURS), ("background", backgrounds, BACKGROUNDS))
    for name, values, vocabulary in checks:
        if values.size and (values.min() < 0 or values.max() >= len(vocabulary)):
            raise ValueError(f"{name} index out of range 0..{len(vocabulary) - 1}")
    if palette is not None and np.shape(palette) != (len(COLOURS), 3):
        raise ValueError(f"palette must hold one RGB triple per colour, shape ({len(COLOURS)}, 3)")
    if size < MIN_SIZE:
        raise GcctlError(f"image size {size} is too small to draw the shapes; use --size {MIN_SIZE} or more")
    if cues is not None:
        cues = np.asarray(cues, dtype=np.int64).reshape(-1)
        if len(cues) != len(shapes) or (cues.size and (cues.min() < 0 or cues.max() >= len(BACKGROUNDS))):
            raise ValueError(f"cues need one BACKGROUNDS index (0..{len(BACKGROUNDS) - 1}) per image")
        if not 0 < cue_size <= 32:
            raise ValueError(f"cue size {cue_size} must be in (0, 32] px at 32 px")

    n = len(shapes)
    scale = size / 32
    # Per-image geometry and colour drawn up front, so they do not depend on the chunking.
    centres = size / 2 + rng.uniform(-3, 3, size=(n, 2)) * scale
    radii = rng.uniform(6, 9, size=n) * scale
    radii = radii * object_scale
    rgb = (_COLOUR_RGB if palette is None else np.asarray(palette, dtype=np.float32))[colours] + rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, size=(n, 3)).astype(np.float32)

    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        part = slice(start, min(start + _CHUNK, n))
        canvas = _backgrounds(backgrounds[part], size, rng)
        if cues is not None:
            ys, xs = _grid(size)
            corner = (ys < cue_size * scale) & (xs < cue_size * scale)
            canvas = np.where(corner[None, :, :, None], _backgrounds(cues[part], size, rng), canvas)
        mask = _shape_masks(shapes[part], centres[part], radii[part], size)
        if outline:
            mask = mask & ~_eroded(mask, max(1, round(scale)))
        canvas = np.where(mask[..., None], rgb[part, None, None, :], canvas)
        canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * _PIXEL_NOISE
        images[part] = np.clip(canvas, 0, 255).round().astype(np.uint8)
    return images


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates, y down."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    return coords[:, None], coords[None, :]


def _eroded(mask: np.ndarray, width: int) -> np.ndarray:
    """The mask less a boundary `width` pixels wide (each step keeps pixels whose four neighbours are inside)."""
    for _ in range(width):
        padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
        mask = mask & padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]
    return mask


def _shape_masks(shapes: np.ndarray, centres: np.ndarray, radii: np.ndarray, size: int) -> np.ndarray:
    ys, xs = _grid(size)
    mask = np.zeros((len(shapes), size, size), dtype=bool)
    for index, name in enumerate(SHAPES):
        chosen = np.flatnonzero(shapes == index)
        if chosen.size == 0:
            continue
        dx = xs[None] - centres[chosen, 0, None, None].astype(np.float32)
        dy = ys[None] - centres[chosen, 1, None, None].astype(np.float32)
        mask[chosen] = _SHAPE_TESTS[name](dx, dy, radii[chosen, None, None].astype(np.float32))
    return mask


def _triangle(dx, dy, r):
    # Apex up at -r, base at +0.75r: the area's centre stays near the image centre.
    half_width = (dy + r) / (1.75 * r) * 0.95 * r
    return (dy >= -r) & (dy <= 0.75 * r) & (np.abs(dx) <= half_width)


def _cross(dx, dy, r):
    arm = 0.32 * r
    ax, ay = np.abs(dx), np.abs(dy)
    return ((ax <= arm) & (ay <= r)) | ((ay <= arm) & (ax <= r))


def _star(dx, dy, r):
    # Five points, one pointing up; the radius swings between 0.45r and r with the angle.
    angle = np.arctan2(dy, dx) + np.pi / 2
    reach = r * (0.45 + 0.55 * ((1 + np.cos(5 * angle)) / 2) ** 2)
    return dx * dx + dy * dy <= reach * reach


_SHAPE_TESTS = {
    "circle": lambda dx, dy, r: dx * dx + dy * dy <= r * r,
    # Squares and rings are shrunk/hollowed so every shape covers a comparable area.
    "square": lambda dx, dy, r: (np.abs(dx) <= 0.82 * r) & (np.abs(dy) <= 0.82 * r),
    "triangle": _triangle,
    "cross": _cross,
    "ring": lambda dx, dy, r: ((dx * dx + dy * dy) <= r * r) & ((dx * dx + dy * dy) >= (0.55 * r) ** 2),
    "star": _star,
}


def _backgrounds(backgrounds: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    canvas = np.empty((len(backgrounds), size, size, 3), dtype=np.float32)
    for index, name in enumerate(BACKGROUNDS):
        chosen = np.flatnonzero(backgrounds == index)
        if chosen.size:
            canvas[chosen] = _TEXTURES[name](len(chosen), size, rng)
    return canvas


def _blotches(k: int, size: int, rng: np.random.Generator, cell: int) -> np.ndarray:
    """Low-frequency noise [k, size, size, 1]: a coarse random grid upsampled by repetition."""
    cells = -(-size // cell)
    coarse = rng.standard_normal((k, cells, cells), dtype=np.float32)
    return np.repeat(np.repeat(coarse, cell, axis=1), cell, axis=2)[:, :size, :size, None]


def _fine(k: int, size: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((k, size, size, 1), dtype=np.float32)


def _water(k, size, rng):
    ys, xs = _grid(size)
    period = rng.uniform(4, 7, size=(k, 1, 1)).astype(np.float32) * size / 32
    phase = rng.uniform(0, 2 * np.pi, size=(k, 1, 1)).astype(np.float32)
    sway = rng.uniform(0, 2 * np.pi, size=(k, 1, 1)).astype(np.float32)
    # Horizontal wave crests that sway a little along x.
    waves = np.sin(2 * np.pi * ys / period + phase + 0.8 * np.sin(2 * np.pi * xs / (3 * period) + sway))
    base = np.array([30, 105, 150], dtype=np.float32)
    return base + waves[..., None] * np.array([22, 30, 30], dtype=np.float32) + _fine(k, size, rng) * 5


def _grass(k, size, rng):
    base = np.array([70, 130, 45], dtype=np.float32)
    shade = _fine(k, size, rng) * 22 + _blotches(k, size, rng, max(2, size // 8)) * 12
    return base + shade * np.array([0.7, 1.0, 0.5], dtype=np.float32)


def _sand(k, size, rng):
    base = np.array([214, 188, 135], dtype=np.float32)
    shade = _fine(k, size, rng) * 9 + _blotches(k, size, rng, max(2, size // 4)) * 8
    return base + shade * np.array([1.0, 0.95, 0.8], dtype=np.float32)


def _snow(k, size, rng):
    base = np.array([236, 240, 247], dtype=np.float32)
    tint = _blotches(k, size, rng, max(2, size // 4)) * np.array([6, 4, 2], dtype=np.float32)
    return base + _fine(k, size, rng) * 5 + tint


def _forest(k, size, rng):
    _, xs = _grid(size)
    period = rng.uniform(5, 9, size=(k, 1, 1)).astype(np.float32) * size / 32
    phase = rng.uniform(0, 2 * np.pi, size=(k, 1, 1)).astype(np.float32)
    trunks = np.broadcast_to(np.sin(2 * np.pi * xs / period + phase) > 0.35, (k, size, size))  # vertical stripes
    canopy = np.array([28, 78, 38], dtype=np.float32)
    bark = np.array([88, 62, 38], dtype=np.float32)
    return np.where(trunks[..., None], bark, canopy) + _fine(k, size, rng) * 8


def _sky(k, size, rng):
    ys, _ = _grid(size)
    top = np.array([70, 130, 215], dtype=np.float32)
    horizon = np.array([175, 210, 245], dtype=np.float32)
    shift = rng.uniform(-0.15, 0.15, size=(k, 1, 1, 1)).astype(np.float32)
    level = np.clip((ys / size)[None, :, :, None] + shift, 0, 1)  # gradient from top to horizon
    return top + level * (horizon - top) + _fine(k, size, rng) * 3


_TEXTURES = {"water": _water, "grass": _grass, "sand": _sand, "snow": _snow, "forest": _forest, "sky": _sky}
