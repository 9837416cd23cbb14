"""Rendering one image of the embedded dataset: the classes, the scenes, the clutter.

The design is described in `mlic.data.embedded` (which writes the COCO and VOC trees). An
image is a pure function of (seed, split, index): its own NumPy generator, PIL drawing at
twice the size, a box-filter downsample, then JPEG with fixed settings.
"""

from __future__ import annotations

import colorsys
import io
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {
    "red": 0.0,
    "yellow": 58.0,
    "green": 120.0,
    "cyan": 183.0,
    "blue": 235.0,
    "magenta": 300.0,
}
SHAPES = ("circle", "square", "triangle", "cross")
CLASSES = tuple(f"{colour}-{shape}" for colour in COLOURS for shape in SHAPES)
NUM_SCENES = 6
# Scene s holds shape j in colour (s + j) mod 6, j = 0..3: every class is in exactly one scene.
SCENES = tuple(
    tuple(((s + j) % len(COLOURS)) * len(SHAPES) + j for j in range(len(SHAPES)))
    for s in range(NUM_SCENES)
)
SCENE_WEIGHTS = (0.24, 0.2, 0.17, 0.15, 0.13, 0.11)  # some scenes (and classes) are rarer
IN_SCENE_WEIGHTS = (0.38, 0.27, 0.2, 0.15)
P_OUT_OF_SCENE = 0.15
NUM_OBJECTS_P = (0.02, 0.2, 0.24, 0.2, 0.16, 0.1, 0.08)  # P(0..6 objects); 0 = no labels
# Drawn object areas, as fractions of the image: log-uniform from MIN_AREA. 0.0015 (about 4 px
# across at 96 px, 2 px at the 56-px input) puts 11 % of the validation positives under COCO's
# "small" limit scaled to the image (32^2 px of 640x480, i.e. 1/300): 250 of 2,208, where
# 0.002 put 6.4 % (141), too few for Table 5's small bucket to separate configurations.
MIN_AREA = 0.0015
DISTRACTOR_MIN_AREA = 0.005  # clutter shapes in neutral colours
# Pretext (pretraining) images: one object, drawn from 0.5 % to 30 % of the image.
PRETEXT_MIN_AREA, PRETEXT_MAX_AREA = 0.005, 0.30
MIN_VISIBLE = 0.35  # of an object's own area, after occlusion and truncation
DIFFICULT_VISIBLE = 0.5
DIFFICULT_TINY, P_DIFFICULT_TINY = 0.01, 0.35
SUPERSAMPLE = 2  # draw at 2x and downsample: anti-aliased edges
JPEG = {"quality": 90, "subsampling": 0, "optimize": False}  # 4:4:4 keeps small objects' colour
# Unit-circumradius polygon area per shape, to turn an area fraction into a radius.
SHAPE_AREA = {"circle": math.pi, "square": 2.0, "triangle": 3 * math.sqrt(3) / 4, "cross": 2.2576}
CROSS_HALF_WIDTH = 0.34


@dataclass
class _Object:
    class_index: int
    full_area: int  # px at the supersampled scale, including any part outside the image
    visible: int  # px still showing
    truncated: bool


# --------------------------------------------------------------------------- rendering


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """Hue in degrees, saturation and value in [0, 1] -> RGB float32 in [0, 255]."""
    return np.array(colorsys.hsv_to_rgb((h % 360) / 360, s, v), dtype=np.float32) * 255


def render_image(
    seed: int, split_code: int, index: int, size: int, *, pretext: bool = False
) -> tuple[bytes, list[dict[str, Any]]]:
    """One image: (JPEG bytes, annotated objects with bbox/area in final pixels, VOC flags).

    pretext: one object of any class and no scene, the backbone's pretraining images (the
    stand-in for ImageNet, see `mlic.data.embedded`); the clutter is the same.
    """
    rng = np.random.default_rng([seed, split_code, index])
    big = size * SUPERSAMPLE
    canvas = _background(rng, big)  # [big, big, 3] float32
    owner = np.full((big, big), -1, dtype=np.int16)  # topmost object per pixel; -1 none
    objects: list[_Object] = []

    # Distractors below the objects.
    for _ in range(rng.integers(0, 3)):
        _draw_distractor(rng, canvas, owner, objects, big, on_top=False)

    if pretext:
        cls = int(rng.integers(len(CLASSES)))
        area = math.exp(rng.uniform(math.log(PRETEXT_MIN_AREA), math.log(PRETEXT_MAX_AREA)))
        _draw_object(rng, canvas, owner, objects, big, cls, area)
    else:
        _draw_scene(rng, canvas, owner, objects, big)

    # Distractors on top: occluders (kept only if every object stays >= MIN_VISIBLE visible).
    for _ in range(rng.integers(0, 3)):
        _draw_distractor(rng, canvas, owner, objects, big, on_top=True)

    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB").reduce(SUPERSAMPLE)
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels + rng.normal(0.0, rng.uniform(1.5, 6.0), pixels.shape).astype(np.float32)
    image = Image.fromarray(np.clip(pixels.round(), 0, 255).astype(np.uint8), "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **JPEG)
    return buffer.getvalue(), _annotate(rng, owner, objects, size)


def _draw_scene(rng, canvas, owner, objects, big) -> None:
    """The dataset's objects: one scene, mostly its classes (the co-occurrence structure)."""
    n = rng.choice(len(NUM_OBJECTS_P), p=NUM_OBJECTS_P)
    scene = rng.choice(NUM_SCENES, p=SCENE_WEIGHTS)
    members = SCENES[scene]
    in_scene = np.roll(IN_SCENE_WEIGHTS, scene)  # which member is most frequent varies
    upper = 0.30 if n <= 2 else 0.18 if n <= 4 else 0.12
    for _ in range(n):
        if rng.random() < P_OUT_OF_SCENE:
            cls = int(rng.integers(len(CLASSES)))
        else:
            cls = int(members[rng.choice(len(members), p=in_scene)])
        area = math.exp(rng.uniform(math.log(MIN_AREA), math.log(upper)))
        _draw_object(rng, canvas, owner, objects, big, cls, area)


def _annotate(
    rng: np.random.Generator, owner: np.ndarray, objects: list[_Object], size: int
) -> list[dict[str, Any]]:
    out = []
    scale = SUPERSAMPLE
    for j, obj in enumerate(objects):
        ys, xs = np.nonzero(owner == j)
        assert ys.size == obj.visible > 0
        x0, y0 = xs.min() / scale, ys.min() / scale
        w, h = (xs.max() + 1) / scale - x0, (ys.max() + 1) / scale - y0
        area = obj.visible / scale**2  # px at the final size: the VISIBLE area, as COCO's
        visible_fraction = obj.visible / obj.full_area
        tiny = area < DIFFICULT_TINY * size * size
        difficult = visible_fraction < DIFFICULT_VISIBLE or (
            tiny and rng.random() < P_DIFFICULT_TINY
        )
        out.append(
            {
                "class_index": obj.class_index,
                "bbox": [round(float(v), 2) for v in (x0, y0, w, h)],
                "area": round(float(area), 2),
                "truncated": obj.truncated,
                "difficult": bool(difficult),
            }
        )
    return out


def _background(rng: np.random.Generator, big: int) -> np.ndarray:
    """Muted gradient plus one low-contrast texture: clutter that is never a class colour."""
    yy, xx = _grid(big)
    angle = rng.uniform(0, 2 * math.pi)
    t = (xx * math.cos(angle) + yy * math.sin(angle)) / big
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c1 = _hsv(rng.uniform(0, 360), rng.uniform(0, 0.3), rng.uniform(0.25, 0.8))
    c2 = _hsv(rng.uniform(0, 360), rng.uniform(0, 0.3), rng.uniform(0.25, 0.8))
    canvas = c1 + (c2 - c1) * t[..., None]  # [big, big, 3]
    kind = rng.choice(4)
    amp = rng.uniform(6, 22)
    if kind == 1:  # stripes
        a2, period = rng.uniform(0, math.pi), rng.uniform(6, 24)
        phase = (xx * math.cos(a2) + yy * math.sin(a2)) / period
        canvas += (amp * np.sign(np.sin(2 * math.pi * phase)))[..., None]
    elif kind == 2:  # checks
        p = int(rng.integers(6, 24))
        canvas += (amp * (((xx // p + yy // p) % 2) * 2 - 1))[..., None]
    elif kind == 3:  # blobs: low-resolution noise, upsampled
        cells = int(rng.integers(3, 9))
        noise = rng.uniform(0, 255, (cells, cells, 3)).astype(np.uint8)
        smooth = Image.fromarray(noise, "RGB").resize((big, big), Image.Resampling.BILINEAR)
        canvas += (np.asarray(smooth, dtype=np.float32) - 127.5) * (amp * 1.5 / 127.5)
    return canvas


def _shape_points(
    shape: str, cx: float, cy: float, r: float, rot: float
) -> list[tuple[float, float]]:
    if shape == "square":
        unit = [
            (math.cos(a), math.sin(a)) for a in (math.pi / 4 + k * math.pi / 2 for k in range(4))
        ]
    elif shape == "triangle":
        unit = [
            (math.cos(a), math.sin(a))
            for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))
        ]
    elif shape == "cross":
        w = CROSS_HALF_WIDTH
        unit = [(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1),
                (-w, -1), (-w, -w), (-1, -w), (-1, w), (-w, w), (-w, 1)]  # fmt: skip
    else:  # circle: a 32-gon (rotation-invariant)
        unit = [(math.cos(a), math.sin(a)) for a in (k * 2 * math.pi / 32 for k in range(32))]
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in unit]


def _window(bounds: tuple[float, float, float, float], pad: int = 3) -> tuple[int, int, int, int]:
    """An integer window (x0, y0, width, height) around float bounds, possibly off-canvas."""
    x0, y0 = math.floor(bounds[0]) - pad, math.floor(bounds[1]) - pad
    return x0, y0, math.ceil(bounds[2]) + pad - x0, math.ceil(bounds[3]) + pad - y0


def _rasterise(window: tuple[int, int, int, int], draw_fn) -> np.ndarray:
    """A [h, w] bool mask of what `draw_fn(draw, x0, y0)` paints into the window."""
    x0, y0, w, h = window
    im = Image.new("L", (w, h), 0)
    draw_fn(ImageDraw.Draw(im), x0, y0)
    return np.asarray(im) > 0


def _polygon(points, **kwargs):
    def draw(d: ImageDraw.ImageDraw, ox: int, oy: int) -> None:
        d.polygon([(x - ox, y - oy) for x, y in points], **kwargs)

    return draw


def _clip(x0: int, y0: int, mask: np.ndarray, big: int):
    """The part of a window on the canvas: (row slice, column slice, mask part) or None."""
    h, w = mask.shape
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + w, big), min(y0 + h, big)
    if cx1 <= cx0 or cy1 <= cy0:
        return None
    part = mask[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    return slice(cy0, cy1), slice(cx0, cx1), part


def _covered(owner: np.ndarray, placed, n_objects: int) -> np.ndarray:
    """How many visible pixels of each object a new layer would hide."""
    ys, xs, part = placed
    below = owner[ys, xs][part]
    below = below[below >= 0]
    return np.bincount(below, minlength=n_objects)[:n_objects]


def _keeps_objects_visible(objects: list[_Object], lost: np.ndarray) -> bool:
    return all(o.visible - lost[j] >= MIN_VISIBLE * o.full_area for j, o in enumerate(objects))


def _paint(canvas: np.ndarray, placed, pixels: np.ndarray | None, colour: np.ndarray) -> None:
    ys, xs, part = placed
    region = canvas[ys, xs]  # a view
    region[part] = colour if pixels is None else pixels[part]


def _draw_object(rng, canvas, owner, objects, big, cls: int, area: float) -> None:
    shape = SHAPES[cls % len(SHAPES)]
    hue = COLOURS[CLASSES[cls].split("-")[0]] + rng.uniform(-6, 6)
    colour = _hsv(hue, rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0))
    style = rng.choice(4, p=(0.45, 0.25, 0.2, 0.1))  # solid, stripes, shaded, outlined
    rot = rng.uniform(0, 2 * math.pi)
    r = math.sqrt(area * big * big / SHAPE_AREA[shape])
    for attempt in range(10):
        if attempt == 5:
            r *= 0.7
        cx, cy = rng.uniform(0.05, 0.95, size=2) * big
        points = _shape_points(shape, cx, cy, r, rot)
        window = _window((cx - r, cy - r, cx + r, cy + r))
        x0, y0 = window[:2]
        mask = _rasterise(window, _polygon(points, fill=255))
        full = int(mask.sum())
        placed = _clip(x0, y0, mask, big)
        if placed is None or full == 0:
            continue
        inside = int(placed[2].sum())
        if inside < max(MIN_VISIBLE, 0.5) * full:
            continue  # mostly outside the image
        lost = _covered(owner, placed, len(objects))
        if not _keeps_objects_visible(objects, lost):
            continue
        pixels = _texture(rng, style, colour, placed, window, points)
        _paint(canvas, placed, pixels, colour)
        for j, o in enumerate(objects):
            o.visible -= int(lost[j])
        ys, xs, part = placed
        owner[ys, xs][part] = len(objects)
        objects.append(_Object(cls, full, inside, truncated=inside < full))
        return


def _texture(rng, style: int, colour, placed, window, points) -> np.ndarray | None:
    """Within-class variation: None = solid colour, else per-pixel colours of the placed part."""
    if style == 0:
        return None
    ys, xs, part = placed
    yy, xx = np.mgrid[ys, xs].astype(np.float32)
    if style == 1:  # stripes in a darker shade of the same hue
        a, period = rng.uniform(0, math.pi), rng.uniform(3, 7)
        on = (np.floor((xx * math.cos(a) + yy * math.sin(a)) / period) % 2).astype(bool)
        dark = colour * rng.uniform(0.5, 0.7)
        return np.where(on[..., None], dark, colour)
    if style == 2:  # shaded: a linear gradient across the object
        a = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(a) + yy * math.sin(a)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        return np.clip(colour * (0.6 + 0.55 * t[..., None]), 0, 255)
    # outlined: solid fill with a dark rim
    rim = _rasterise(window, _polygon(points, outline=255, width=SUPERSAMPLE))
    x0, y0 = window[:2]
    out = np.broadcast_to(colour, part.shape + (3,)).copy()
    out[rim[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]] = colour * 0.3
    return out


def _draw_distractor(rng, canvas, owner, objects, big, *, on_top: bool) -> None:
    """Clutter that is not a class: it must not be labelled, and must not look like one."""
    kind = rng.choice(6)
    class_hue = list(COLOURS.values())[rng.integers(len(COLOURS))] + rng.uniform(-6, 6)
    colour = _hsv(class_hue, rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0))
    width = int(rng.integers(2, 7))
    cx, cy = rng.uniform(0, big, size=2)
    span = rng.uniform(0.15, 0.5) * big

    if kind == 0:  # a class shape in a neutral (non-class) colour
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = _hsv(rng.uniform(0, 360), rng.uniform(0, 0.12), rng.uniform(0.05, 1.0))
        r = math.exp(rng.uniform(math.log(DISTRACTOR_MIN_AREA), math.log(0.1)))
        r = math.sqrt(r * big * big / 3)
        points = _shape_points(shape, cx, cy, r, rng.uniform(0, 2 * math.pi))
        window = _window((cx - r, cy - r, cx + r, cy + r))
        mask = _rasterise(window, _polygon(points, fill=255))
    else:
        if kind == 1:  # a bar
            a = rng.uniform(0, math.pi)
            dx, dy = span / 2 * math.cos(a), span / 2 * math.sin(a)
            pts = [(cx - dx, cy - dy), (cx + dx, cy + dy)]
        elif kind == 2:  # a zigzag
            steps = int(rng.integers(3, 6))
            pts = [
                (cx + span * (k / steps - 0.5), cy + (k % 2 - 0.5) * span / 3)
                for k in range(steps + 1)
            ]
        else:
            pts = []
        r = span / 2
        start = rng.uniform(0, 360)
        extent = rng.uniform(60, 220)
        dots = rng.uniform(-r, r, size=(int(rng.integers(3, 9)), 2))
        ring_width = max(2, int(r * 0.25))

        def draw(d: ImageDraw.ImageDraw, ox: int, oy: int) -> None:
            box = (cx - r - ox, cy - r - oy, cx + r - ox, cy + r - oy)
            if pts:
                d.line([(x - ox, y - oy) for x, y in pts], fill=255, width=width, joint="curve")
            elif kind == 3:  # an arc
                d.arc(box, start, start + extent, fill=255, width=width)
            elif kind == 4:  # a ring (hollow: never a filled circle)
                d.ellipse(box, outline=255, width=ring_width)
            else:  # a scatter of small dots
                for dx, dy in dots:
                    x, y = cx + dx - ox, cy + dy - oy
                    d.ellipse((x - 2, y - 2, x + 2, y + 2), fill=255)

        window = _window((cx - r, cy - r, cx + r, cy + r), pad=width + 3)
        mask = _rasterise(window, draw)
    placed = _clip(window[0], window[1], mask, big)
    if placed is None:
        return
    if on_top:
        lost = _covered(owner, placed, len(objects))
        if not _keeps_objects_visible(objects, lost):
            return
        for j, o in enumerate(objects):
            o.visible -= int(lost[j])
        ys, xs, part = placed
        owner[ys, xs][part] = -1
    _paint(canvas, placed, None, colour)
