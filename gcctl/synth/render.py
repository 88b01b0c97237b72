"""Procedural images of the synthetic world: coloured shapes on a textured background.

Everything is vectorised over images (in fixed-size chunks, to bound memory) and every random choice
comes from the caller's `np.random.Generator`, so the same generator state gives the same pixels.
Geometry is defined at 32 px and scaled with `size`. `render` draws one object per image at the centre (the
benchmarks' images); `render_scene` draws several objects per image where the caller places them (the corpus's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gcctl.errors import GcctlError

SHAPES = ("circle", "square", "triangle", "cross", "ring", "star", "diamond", "hexagon", "heart", "crescent", "arrow",
          "bar", "pentagon", "ellipse", "chevron", "semicircle")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "pink", "brown", "white", "black", "grey", "cyan")
BACKGROUNDS = ("water", "grass", "sand", "snow", "forest", "sky", "brick", "road", "wood", "night")
FILLS = ("solid", "striped", "dotted", "checkered")  # an object's surface: its colour, or its colour and a dark pattern

MIN_SIZE = 16
_CHUNK = 2048  # images rendered at once: ~100 MB of float32 work arrays at 32 px

_COLOUR_RGB = np.array(
    [(220, 40, 40), (40, 175, 60), (40, 80, 225), (240, 215, 40), (145, 50, 185), (250, 140, 25),
     (245, 130, 185), (125, 80, 40), (245, 245, 245), (25, 25, 25), (128, 128, 128), (40, 210, 225)],
    dtype=np.float32,
)
_COLOUR_JITTER = 18  # per image and channel, so a colour is a region of RGB space, not one point
_PIXEL_NOISE = 4.0  # sensor-like noise over the whole image
_PATTERN_SHADE = 0.35  # a pattern's pixels: the object's colour darkened to this share (lightened for dark colours)
# An object's radius range in px at 32 px: big (a single object filling the image, the default) and small (a
# single object among its scene, the corpus's "small"; a Waterbirds-like bird in its landscape).
BIG_RADIUS = (6.0, 9.0)
SMALL_RADIUS = (4.0, 5.5)


@dataclass(frozen=True)
class Layer:
    """One object in each of N images: SHAPES and FILLS indices, RGB [N, 3], centre [N, 2] (x, y) and radius [N]
    in pixels at the image's size; `present` [N] (None: every image) says which images have it."""

    shapes: np.ndarray
    rgb: np.ndarray
    fills: np.ndarray | None
    centres: np.ndarray
    radii: np.ndarray
    present: np.ndarray | None = None

    def part(self, rows: slice) -> "Layer":
        pick = (lambda a: None if a is None else a[rows])
        return Layer(self.shapes[rows], self.rgb[rows], pick(self.fills), self.centres[rows], self.radii[rows],
                     pick(self.present))


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
    fills=None,
    radius: tuple[float, float] = BIG_RADIUS,
) -> np.ndarray:
    """Render one image per index triple; returns uint8 [N, size, size, 3].

    `shapes`, `colours`, `backgrounds` are integer indices into SHAPES, COLOURS, BACKGROUNDS. `cues`, when
    given, are BACKGROUNDS indices too: each image gets a square patch of that texture, `cue_size` px wide
    at 32 px, in its top-left corner, under the object. Without cues the generator is used exactly as before.
    The keywords draw domain-shifted variants (the source world's shifts); they change no random draw, so
    their defaults leave every image as it was: `palette` replaces the colours' RGB values ([len(COLOURS), 3]),
    `object_scale` multiplies every shape's radius, `outline` keeps only a shape's boundary, `fills` (FILLS
    indices; None: all solid) patterns the objects' surfaces, `radius` is the range radii are drawn from
    (BIG_RADIUS or SMALL_RADIUS).
    """
    shapes, colours, backgrounds = (np.asarray(a, dtype=np.int64).reshape(-1) for a in (shapes, colours, backgrounds))
    if not len(shapes) == len(colours) == len(backgrounds):
        raise ValueError(f"index arrays differ in length: {len(shapes)}, {len(colours)}, {len(backgrounds)}")
    fills = None if fills is None else np.asarray(fills, dtype=np.int64).reshape(-1)
    checks = [("shape", shapes, SHAPES), ("colour", colours, COLOURS), ("background", backgrounds, BACKGROUNDS)]
    if fills is not None:
        checks.append(("fill", fills, FILLS))
    _check_indices(checks, len(shapes))
    if palette is not None and np.shape(palette) != (len(COLOURS), 3):
        raise ValueError(f"palette must hold one RGB triple per colour, shape ({len(COLOURS)}, 3)")
    _check_size(size)
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
    radii = rng.uniform(*radius, size=n) * scale
    radii = radii * object_scale
    rgb = (_COLOUR_RGB if palette is None else np.asarray(palette, dtype=np.float32))[colours] + _jitter(rng, n)
    layer = Layer(shapes, rgb, fills, centres, radii)
    return _paint(backgrounds, [layer], rng, size, cues=cues, cue_size=cue_size, outline=outline)


def render_scene(backgrounds, objects, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """Render N images of several objects each, painted in order; returns uint8 [N, size, size, 3].

    `objects` is a list of dicts of arrays over the N images: `shape`, `colour`, `fill` (indices), `centre`
    [N, 2] (x, y) and `radius` [N] in pixels at 32 px, `present` [N] bool. Each object's colour jitter is drawn
    here, object by object, then the backgrounds and the noise as in `render`.
    """
    backgrounds = np.asarray(backgrounds, dtype=np.int64).reshape(-1)
    n = len(backgrounds)
    _check_indices([("background", backgrounds, BACKGROUNDS)], n)
    _check_size(size)
    scale = size / 32
    layers = []
    for item in objects:
        shapes, colours, fills = (np.asarray(item[key], dtype=np.int64).reshape(-1) for key in ("shape", "colour", "fill"))
        _check_indices([("shape", shapes, SHAPES), ("colour", colours, COLOURS), ("fill", fills, FILLS)], n)
        layers.append(Layer(shapes, _COLOUR_RGB[colours] + _jitter(rng, n), fills,
                            np.asarray(item["centre"], dtype=np.float64) * scale,
                            np.asarray(item["radius"], dtype=np.float64) * scale, np.asarray(item["present"], dtype=bool)))
    return _paint(backgrounds, layers, rng, size)


def _check_indices(checks, n: int) -> None:
    for name, values, vocabulary in checks:
        if len(values) != n:
            raise ValueError(f"{name} indices: {len(values)} for {n} images")
        if values.size and (values.min() < 0 or values.max() >= len(vocabulary)):
            raise ValueError(f"{name} index out of range 0..{len(vocabulary) - 1}")


def _check_size(size: int) -> None:
    if size < MIN_SIZE:
        raise GcctlError(f"image size {size} is too small to draw the shapes; use --size {MIN_SIZE} or more")


def _jitter(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, size=(n, 3)).astype(np.float32)


def _paint(backgrounds: np.ndarray, layers: list[Layer], rng: np.random.Generator, size: int, *, cues=None,
           cue_size: float = 8.0, outline: bool = False) -> np.ndarray:
    """Backgrounds (and corner cues), the layers in order, then sensor noise, chunk by chunk."""
    n = len(backgrounds)
    scale = size / 32
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        part = slice(start, min(start + _CHUNK, n))
        canvas = _backgrounds(backgrounds[part], size, rng)
        if cues is not None:
            ys, xs = _grid(size)
            corner = (ys < cue_size * scale) & (xs < cue_size * scale)
            canvas = np.where(corner[None, :, :, None], _backgrounds(cues[part], size, rng), canvas)
        for layer in (layer.part(part) for layer in layers):
            mask, pattern = _object_pixels(layer, size)
            if outline:
                mask = mask & ~_eroded(mask, max(1, round(scale)))
            if layer.present is not None:
                mask &= layer.present[:, None, None]
            colour = np.broadcast_to(layer.rgb[:, None, None, :], canvas.shape)
            if pattern is not None:
                colour = np.where(pattern[..., None], _pattern_colour(layer.rgb)[:, None, None, :], colour)
            canvas = np.where(mask[..., None], colour, canvas)
        canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * _PIXEL_NOISE
        images[part] = np.clip(canvas, 0, 255).round().astype(np.uint8)
    return images


def _pattern_colour(rgb: np.ndarray) -> np.ndarray:
    """A pattern's colour: the object's darkened, or lightened where the object is already dark."""
    dark = rgb.mean(axis=1, keepdims=True) < 70
    return np.where(dark, rgb + 140, rgb * _PATTERN_SHADE).astype(np.float32)


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


def _object_pixels(layer: Layer, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Each image's object mask [n, size, size] and, where `layer.fills` is given, its pattern pixels."""
    ys, xs = _grid(size)
    scale = size / 32
    mask = np.zeros((len(layer.shapes), size, size), dtype=bool)
    pattern = None if layer.fills is None else np.zeros_like(mask)
    for index, name in enumerate(SHAPES):
        chosen = np.flatnonzero(layer.shapes == index)
        if chosen.size == 0:
            continue
        dx = xs[None] - layer.centres[chosen, 0, None, None].astype(np.float32)
        dy = ys[None] - layer.centres[chosen, 1, None, None].astype(np.float32)
        mask[chosen] = _SHAPE_TESTS[name](dx, dy, layer.radii[chosen, None, None].astype(np.float32))
        if pattern is not None:
            pattern[chosen] = _fill_pattern(layer.fills[chosen], dx, dy, scale)
    return mask, pattern


def _fill_pattern(fills: np.ndarray, dx: np.ndarray, dy: np.ndarray, scale: float) -> np.ndarray:
    """The pattern pixels of each object's fill, anchored at its centre (no random draw)."""
    stripes = np.floor((dx + dy) / (2.5 * scale)) % 2 == 1  # diagonal bands 2.5 px wide
    period = 4.0 * scale
    dots = ((np.mod(dx, period) - period / 2) ** 2 + (np.mod(dy, period) - period / 2) ** 2) <= (1.1 * scale) ** 2
    checks = (np.floor(dx / (2.5 * scale)) + np.floor(dy / (2.5 * scale))) % 2 == 1
    choice = fills[:, None, None]
    return ((choice == FILLS.index("striped")) & stripes) | ((choice == FILLS.index("dotted")) & dots) | (
        (choice == FILLS.index("checkered")) & checks)


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


def _regular_polygon(dx, dy, r, sides: int, rotation: float):
    """Inside a regular polygon of circumradius r; `rotation` turns its edge normals (radians, y up)."""
    inside = np.ones(np.broadcast_shapes(dx.shape, dy.shape, r.shape), dtype=bool)
    for k in range(sides):
        angle = rotation + 2 * np.pi * k / sides
        inside &= dx * np.cos(angle) - dy * np.sin(angle) <= r * np.cos(np.pi / sides)
    return inside


def _heart(dx, dy, r):
    u, v = dx / (0.85 * r), -(dy + 0.15 * r) / (0.85 * r)  # y up, the curve's centre raised a little
    return (u * u + v * v - 1) ** 3 - u * u * v ** 3 <= 0


def _arrow(dx, dy, r):
    # Pointing right: a shaft from the left edge, a head from 0.1r to the tip at r.
    shaft = (dx >= -r) & (dx <= 0.1 * r) & (np.abs(dy) <= 0.28 * r)
    head = (dx >= 0.1 * r) & (dx <= r) & (np.abs(dy) <= 0.85 * (r - dx))
    return shaft | head


def _chevron(dx, dy, r):
    # A thick V, its point down.
    return (np.abs(dy - (0.5 * r - np.abs(dx))) <= 0.32 * r) & (np.abs(dx) <= 0.9 * r)


_SHAPE_TESTS = {
    "circle": lambda dx, dy, r: dx * dx + dy * dy <= r * r,
    # Squares and rings are shrunk/hollowed so every shape covers a comparable area.
    "square": lambda dx, dy, r: (np.abs(dx) <= 0.82 * r) & (np.abs(dy) <= 0.82 * r),
    "triangle": _triangle,
    "cross": _cross,
    "ring": lambda dx, dy, r: ((dx * dx + dy * dy) <= r * r) & ((dx * dx + dy * dy) >= (0.55 * r) ** 2),
    "star": _star,
    "diamond": lambda dx, dy, r: np.abs(dx) + np.abs(dy) <= 1.05 * r,
    "hexagon": lambda dx, dy, r: _regular_polygon(dx, dy, r, 6, 0.0),
    "heart": _heart,
    "crescent": lambda dx, dy, r: (dx * dx + dy * dy <= r * r) & ((dx - 0.45 * r) ** 2 + (dy + 0.1 * r) ** 2 > (0.75 * r) ** 2),
    "arrow": _arrow,
    "bar": lambda dx, dy, r: (np.abs(dx) <= r) & (np.abs(dy) <= 0.3 * r),
    "pentagon": lambda dx, dy, r: _regular_polygon(dx, dy, r, 5, np.pi / 2 + np.pi / 5),
    "ellipse": lambda dx, dy, r: (dx / r) ** 2 + (dy / (0.55 * r)) ** 2 <= 1,
    "chevron": _chevron,
    "semicircle": lambda dx, dy, r: (dx * dx + (dy - 0.4 * r) ** 2 <= r * r) & (dy <= 0.4 * r),  # a dome, flat side down
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


def _brick(k, size, rng):
    ys, xs = _grid(size)
    course = 5.0 * size / 32  # brick height; every other course shifted by half a brick
    length = 9.0 * size / 32
    phase = rng.uniform(0, length, size=(k, 1, 1)).astype(np.float32)
    row = np.floor(ys / course)
    joint = (np.mod(ys, course) < 1.0) | (np.mod(xs + phase + (row % 2) * length / 2, length) < 1.0)
    bricks = np.array([175, 60, 45], dtype=np.float32)
    mortar = np.array([205, 200, 190], dtype=np.float32)
    return np.where(joint[..., None], mortar, bricks) + _fine(k, size, rng) * 7


def _road(k, size, rng):
    base = np.array([85, 85, 90], dtype=np.float32)
    return base + _fine(k, size, rng) * 12 + _blotches(k, size, rng, max(2, size // 8)) * 6


def _wood(k, size, rng):
    ys, xs = _grid(size)
    period = rng.uniform(3, 5, size=(k, 1, 1)).astype(np.float32) * size / 32
    phase = rng.uniform(0, 2 * np.pi, size=(k, 1, 1)).astype(np.float32)
    grain = np.sin(2 * np.pi * ys / period + phase + 0.6 * np.sin(2 * np.pi * xs / (4 * period)))  # wavy horizontal
    base = np.array([150, 105, 60], dtype=np.float32)
    return base + grain[..., None] * np.array([20, 15, 10], dtype=np.float32) + _fine(k, size, rng) * 4


def _night(k, size, rng):
    base = np.array([15, 20, 45], dtype=np.float32)
    stars = (rng.random((k, size, size, 1)) < 0.03).astype(np.float32) * 190
    return base + stars + _fine(k, size, rng) * 3


_TEXTURES = {"water": _water, "grass": _grass, "sand": _sand, "snow": _snow, "forest": _forest, "sky": _sky,
             "brick": _brick, "road": _road, "wood": _wood, "night": _night}
