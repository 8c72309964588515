"""``builtin:shapes``: a procedurally generated world, the offline stand-in for ImageNet.

The world has 10 shapes x 10 colours = 100 concepts ("red circle", ...). A concept image is one large,
flat-filled shape (random size, position jitter and a small rotation) on a noisy, desaturated texture;
far-OoD images are those textures alone (plus colour static), with no shape at all.

Design choices that keep the world learnable by a tiny CLIP at 32 px in minutes on CPU:
- shapes cover 56-80 % of the image width and colours are far apart in RGB, with a small jitter;
- backgrounds are never saturated and always carry pixel noise, so the only flat region of an image
  is the shape (the test for "far-OoD has no shape" relies on this);
- rotations stay within +-20 degrees, so a square never turns into a diamond.

Every image is a pure function of ``(seed, split, name, index)``: splits are disjoint by construction
(their random streams differ), and image ``k`` of a concept is the same whatever else is selected.
Images are generated at a native size (64 px) as ``uint8`` arrays and cached in memory; the model's
transform resizes them.

This module needs only numpy and PIL (the config layer imports its constants).
"""

from __future__ import annotations

import functools
import math
import zlib

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "diamond",
    "star",
    "cross",
    "ring",
    "crescent",
    "arrow",
    "bar",
)

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (245, 225, 0),
    "green": (30, 170, 40),
    "cyan": (0, 210, 225),
    "blue": (30, 60, 225),
    "purple": (145, 40, 195),
    "pink": (255, 125, 200),
    "white": (245, 245, 245),
    "black": (18, 18, 18),
}
COLOURS: tuple[str, ...] = tuple(COLOUR_RGB)

# Textures used behind shapes; each is also a far-OoD class on its own.
TEXTURES: tuple[str, ...] = ("noise", "stripes", "checkerboard", "gradient", "clouds")
# Far-OoD classes: the textures plus saturated colour static that never appears behind a shape.
FAR_OOD_CLASSES: tuple[str, ...] = (*TEXTURES, "static")

# The default in-distribution selection: every shape and every colour appears at least once, so
# near-OoD concepts are new *combinations* of known parts (the hard, ImageNet-like case).
DEFAULT_ID_CONCEPTS: tuple[str, ...] = (
    "red circle",
    "blue square",
    "green triangle",
    "yellow star",
    "purple cross",
    "orange ring",
    "cyan crescent",
    "pink arrow",
    "white diamond",
    "black bar",
    "blue circle",
    "red triangle",
)

# Captions for world pretraining; "{}" is the concept name.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a {} shape.",
    "a picture of a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
    "a {} on a textured background.",
    "a rendering of a {}.",
    "a large {}.",
)

NATIVE_SIZE = 64
DEFAULT_PER_CLASS = 50
SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1, "test": 2}

MAX_ROTATION_DEG = 20.0
COLOUR_JITTER = 10
FLAT_NOISE_STD = 6.0


def world_concepts() -> list[str]:
    """The world's 100 concept names, colour-major: "red circle", "red square", ..."""
    return [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]


def world_classnames() -> list[str]:
    """Every name an image can be generated for: the concepts, then the far-OoD classes."""
    return [*world_concepts(), *FAR_OOD_CLASSES]


def concept_captions(concept: str) -> list[str]:
    """All captions of one concept, one per template."""
    return [template.format(concept) for template in CAPTION_TEMPLATES]


def parse_concept(concept: str) -> tuple[str, str]:
    """``"red circle"`` -> ``("red", "circle")``; raises ValueError for a name outside the world."""
    colour, _, shape = concept.partition(" ")
    if colour not in COLOUR_RGB or shape not in SHAPES:
        raise ValueError(f"not a concept of the shapes world: {concept!r}")
    return colour, shape


# --- geometry ------------------------------------------------------------------------------------


def _rotate(points: list[tuple[float, float]], angle: float, cx: float, cy: float) -> list:
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]


def _star(r: float) -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else 0.45 * r
        a = -math.pi / 2 + k * math.pi / 5
        points.append((radius * math.cos(a), radius * math.sin(a)))
    return points


def _cross(r: float) -> list[tuple[float, float]]:
    w = 0.3 * r
    return [
        (-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w),
        (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w),
    ]  # fmt: skip


def _polygon(shape: str, r: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape centred at the origin, outer radius ``r``, unrotated."""
    if shape == "square":
        a = 0.75 * r
        return [(-a, -a), (a, -a), (a, a), (-a, a)]
    if shape == "triangle":
        return [
            (r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        ]
    if shape == "diamond":
        return [(0, -r), (0.6 * r, 0), (0, r), (-0.6 * r, 0)]
    if shape == "star":
        return _star(r)
    if shape == "cross":
        return _cross(r)
    if shape == "arrow":
        shaft, head = 0.22 * r, 0.6 * r
        return [(-r, -shaft), (0.1 * r, -shaft), (0.1 * r, -head), (r, 0),
                (0.1 * r, head), (0.1 * r, shaft), (-r, shaft)]  # fmt: skip
    if shape == "bar":
        return [(-r, -0.35 * r), (r, -0.35 * r), (r, 0.35 * r), (-r, 0.35 * r)]
    raise ValueError(f"unknown shape {shape!r}")


def shape_mask(shape: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Boolean ``[size, size]`` mask of one shape (no anti-aliasing, so the fill stays flat)."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)

    def disc(x: float, y: float, radius: float, fill: int) -> None:
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)

    if shape == "circle":
        disc(cx, cy, r, 255)
    elif shape == "ring":
        disc(cx, cy, r, 255)
        disc(cx, cy, 0.55 * r, 0)
    elif shape == "crescent":
        disc(cx, cy, r, 255)
        # The bite is offset towards the upper right, turned with the rotation.
        a = angle - math.pi / 4
        disc(cx + 0.5 * r * math.cos(a), cy + 0.5 * r * math.sin(a), 0.8 * r, 0)
    else:
        draw.polygon(_rotate(_polygon(shape, r), angle, cx, cy), fill=255)
    return np.asarray(canvas) > 127


# --- textures ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def render_texture(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A ``[size, size, 3]`` uint8 texture. All but ``static`` are desaturated mid-tones with pixel
    noise (std >= 6), so they contain no flat region and contrast with every shape colour."""
    if kind == "static":
        return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    level = rng.uniform(85, 165)
    tint = rng.uniform(-12, 12, size=3).astype(np.float32)
    yy, xx = _pixel_grid(size)
    if kind == "noise":
        luminance = rng.uniform(8, 20) * rng.standard_normal((size, size), dtype=np.float32)
    elif kind in ("stripes", "checkerboard", "gradient"):
        theta = rng.uniform(0, math.pi)
        u = xx * math.cos(theta) + yy * math.sin(theta)
        v = -xx * math.sin(theta) + yy * math.cos(theta)
        if kind == "gradient":
            luminance = rng.uniform(20, 35) * (2 * u / size - 1)
        else:
            period = rng.uniform(6, 16)
            amplitude = rng.uniform(15, 30)
            phase = rng.uniform(0, period)
            band = np.floor((u + phase) / period)
            if kind == "checkerboard":
                band = band + np.floor(v / period)
            luminance = amplitude * (2 * (band % 2) - 1)
    elif kind == "clouds":
        coarse = rng.normal(0.0, 1.0, size=(6, 6)).astype(np.float32)
        smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))
        luminance = 18 * smooth
    else:
        raise ValueError(f"unknown texture {kind!r}")
    noise = FLAT_NOISE_STD * rng.standard_normal((size, size, 3), dtype=np.float32)
    pixels = np.float32(level) + luminance[..., None] + tint + noise
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


# --- images --------------------------------------------------------------------------------------


def render_concept(concept: str, rng: np.random.Generator, size: int = NATIVE_SIZE) -> np.ndarray:
    """One ``[size, size, 3]`` uint8 image of a concept: a flat shape over a random texture."""
    colour, shape = parse_concept(concept)
    image = render_texture(TEXTURES[rng.integers(len(TEXTURES))], rng, size)
    r = rng.uniform(0.28, 0.40) * size
    cx, cy = size / 2 + rng.uniform(-0.08, 0.08, size=2) * size
    angle = math.radians(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
    fill = np.clip(np.array(COLOUR_RGB[colour]) + jitter, 0, 255).astype(np.uint8)
    image[shape_mask(shape, size, cx, cy, r, angle)] = fill
    return image


def image_rng(seed: int, split: str, name: str, index: int) -> np.random.Generator:
    """The random stream of one image; names are hashed (crc32) so reordering lists changes nothing."""
    return np.random.default_rng([seed, SPLIT_CODES[split], zlib.crc32(name.encode()), index])


def render(name: str, rng: np.random.Generator, size: int = NATIVE_SIZE) -> np.ndarray:
    """An image of any world class: a concept or a far-OoD texture."""
    if name in FAR_OOD_CLASSES:
        return render_texture(name, rng, size)
    return render_concept(name, rng, size)


@functools.lru_cache(maxsize=512)
def class_images(
    name: str, split: str, seed: int, count: int, size: int = NATIVE_SIZE
) -> np.ndarray:
    """Images ``0..count-1`` of one class and split, ``[count, size, size, 3]`` uint8, cached and
    read-only (shared by every dataset that asks for the same class)."""
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    for index in range(count):
        images[index] = render(name, image_rng(seed, split, name, index), size)
    images.setflags(write=False)
    return images


def generate(
    classnames: list[str],
    split: str,
    *,
    seed: int,
    per_class: int | None = None,
    num_samples: int | None = None,
    size: int = NATIVE_SIZE,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images, labels (index into ``classnames``) and sample ids for a selection of the world.

    ``per_class`` images of each class (class-major order), or ``num_samples`` images with classes
    taken in turn (image ``i`` is image ``i // C`` of class ``i % C``).
    """
    n_classes = len(classnames)
    if num_samples is not None:
        counts = [len(range(c, num_samples, n_classes)) for c in range(n_classes)]
    else:
        counts = [per_class or DEFAULT_PER_CLASS] * n_classes
    blocks = [class_images(name, split, seed, n, size) for name, n in zip(classnames, counts)]
    labels = np.concatenate([np.full(n, c, dtype=np.int64) for c, n in enumerate(counts)])
    positions = np.concatenate([np.arange(n) for n in counts])
    if num_samples is not None:  # interleave classes: sort by (position within class, class)
        order = np.lexsort((labels, positions))
    else:
        order = np.arange(len(labels))
    images = np.concatenate(blocks)[order]
    labels, positions = labels[order], positions[order]
    ids = [f"shapes/{seed}/{split}/{classnames[c]}/{k}" for c, k in zip(labels, positions)]
    return images, labels, ids
