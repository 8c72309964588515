"""``builtin:digits``: scikit-learn's handwritten digits (1,797 real 8x8 images, shipped offline).

Images are upscaled by pixel repetition (nearest neighbour) to a native size (32 px by default) and
turned into RGB, so every native pixel is exactly ``round(value * 255 / 16)`` of the original; the
model's transform does the smooth resize. By default the ID classes are 0-5 and the OoD classes 6-9.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

CLASSNAMES: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)
DEFAULT_ID_CLASSES: tuple[str, ...] = CLASSNAMES[:6]
NATIVE_SIZE = 32


@functools.lru_cache(maxsize=1)
def raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's digits: ``[1797, 8, 8]`` floats in 0..16 and ``[1797]`` integer targets."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target.astype(np.int64)


@functools.lru_cache(maxsize=4)
def digit_images(size: int = NATIVE_SIZE) -> np.ndarray:
    """All digits as ``[1797, size, size, 3]`` uint8 RGB (white ink on black), read-only."""
    raw, _ = raw_digits()
    grey = np.rint(raw * (255.0 / 16.0)).astype(np.uint8)
    images = np.empty((len(grey), size, size, 3), dtype=np.uint8)
    for index, small in enumerate(grey):
        big = np.asarray(Image.fromarray(small).resize((size, size), Image.NEAREST))
        images[index] = big[..., None]
    images.setflags(write=False)
    return images
