"""The shapes world: vocabulary, determinism, disjoint splits, and what the pixels show."""

import hashlib
import math
import time

import numpy as np
import pytest

from raymmft.data import open_dataset
from raymmft.data import shapes as world


def modal_colour(image: np.ndarray) -> tuple[np.ndarray, float]:
    """The most frequent exact RGB value of an image and the fraction of pixels that have it."""
    colours, counts = np.unique(image.reshape(-1, 3), axis=0, return_counts=True)
    return colours[counts.argmax()], counts.max() / counts.sum()


def digests(images: np.ndarray) -> list[str]:
    return [hashlib.sha1(image.tobytes()).hexdigest() for image in images]


def test_world_vocabulary():
    concepts = world.world_concepts()
    assert len(concepts) == len(set(concepts)) == 100
    assert {world.parse_concept(c) for c in concepts} == {
        (colour, shape) for colour in world.COLOURS for shape in world.SHAPES
    }
    assert set(world.DEFAULT_ID_CONCEPTS) <= set(concepts)
    assert len(world.DEFAULT_ID_CONCEPTS) == 12
    # ID concepts use every shape and colour, so near-OoD concepts are new combinations.
    id_parts = [world.parse_concept(c) for c in world.DEFAULT_ID_CONCEPTS]
    assert {colour for colour, _ in id_parts} == set(world.COLOURS)
    assert {shape for _, shape in id_parts} == set(world.SHAPES)
    captions = world.concept_captions("red circle")
    assert len(captions) == len(set(captions)) >= 5
    assert all("red circle" in caption for caption in captions)
    assert not set(world.FAR_OOD_CLASSES) & set(concepts)


def test_colours_are_far_apart():
    rgb = np.array(list(world.COLOUR_RGB.values()), dtype=float)
    distances = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    # Further apart than any two jittered fills can drift towards each other.
    assert distances.min() > 4 * world.COLOUR_JITTER * math.sqrt(3)


@pytest.mark.parametrize(
    ("shape", "area_fraction"),
    [("circle", math.pi), ("ring", math.pi * (1 - 0.55**2)), ("square", 4 * 0.75**2),
     ("bar", 2 * 0.7), ("diamond", 2 * 0.6)],
)  # fmt: skip
def test_shape_masks_have_their_geometric_area(shape, area_fraction):
    r = 20.0
    mask = world.shape_mask(shape, 64, 32.0, 32.0, r, angle=0.3)
    # The rasteriser fills outline pixels too: up to half a pixel per unit of perimeter extra.
    assert mask.sum() == pytest.approx(area_fraction * r * r, rel=0.1)
    assert mask.sum() >= area_fraction * r * r * 0.97


def test_generation_is_deterministic_and_cached():
    first = world.class_images("red circle", "val", 7, 5).copy()
    world.class_images.cache_clear()
    again = world.class_images("red circle", "val", 7, 5)
    assert np.array_equal(first, again)
    assert world.class_images("red circle", "val", 7, 5) is again  # served from the cache
    assert not again.flags.writeable
    assert not np.array_equal(first, world.class_images("red circle", "val", 8, 5))


def test_splits_are_disjoint_and_images_distinct():
    names = world.world_classnames()
    seen: dict[str, str] = {}
    for split in ("train", "val", "test"):
        images, labels, _ = world.generate(names, split, seed=0, per_class=4)
        assert images.shape == (4 * len(names), 64, 64, 3) and images.dtype == np.uint8
        for digest in digests(images):
            assert digest not in seen, f"image of {split} repeats one of {seen.get(digest)}"
            seen[digest] = split


def test_an_image_does_not_depend_on_what_else_is_selected():
    alone, _, alone_ids = world.generate(["pink star"], "test", seed=1, per_class=3)
    mixed, labels, ids = world.generate(["red circle", "pink star"], "test", seed=1, per_class=3)
    assert np.array_equal(alone, mixed[labels == 1])
    assert alone_ids == [i for i, label in zip(ids, labels) if label == 1]


def test_num_samples_takes_classes_in_turn():
    names = ["red circle", "blue square", "green triangle"]
    images, labels, _ = world.generate(names, "train", seed=0, num_samples=8)
    assert labels.tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    per_class, _, _ = world.generate(names, "train", seed=0, per_class=3)
    assert np.array_equal(images[labels == 1], per_class[3:6])  # images 0..2 of class 1


def test_concept_images_show_a_flat_shape_of_their_colour():
    """The label is right: the largest flat region of every image has the class's colour."""
    dataset = open_dataset("builtin:shapes?split=val&classes=all&per_class=3", transform=None)
    assert len(dataset) == 300
    for pixels, label in zip(dataset.pixels, dataset.labels):
        colour, fraction = modal_colour(pixels)
        expected = world.COLOUR_RGB[world.parse_concept(dataset.classnames[label])[0]]
        assert fraction > 0.05
        assert np.abs(colour.astype(int) - expected).max() <= world.COLOUR_JITTER


def test_far_ood_images_contain_no_shape():
    """No flat region at all: every exact colour covers under 1 % of a far-OoD image (a shape
    covers over 5 %, see above)."""
    dataset = open_dataset("builtin:shapes?split=test&classes=far_ood&per_class=20", None)
    assert dataset.classnames == list(world.FAR_OOD_CLASSES)
    assert len(dataset) == 20 * len(world.FAR_OOD_CLASSES)
    for pixels in dataset.pixels:
        _, fraction = modal_colour(pixels)
        assert fraction < 0.01


def test_near_ood_never_contains_id_classes():
    ids = open_dataset("builtin:shapes?split=train&classes=id&per_class=2", None)
    near = open_dataset(
        "builtin:shapes?split=val&classes=near_ood&per_class=2", None, id_classnames=ids.classnames
    )
    assert len(near.classnames) == 88
    assert not set(near.classnames) & set(ids.classnames)
    assert set(near.classnames) | set(ids.classnames) == set(world.world_concepts())
    assert sorted(set(near.labels.tolist())) == list(range(88))


def test_native_size_option_and_pil_output():
    dataset = open_dataset("builtin:shapes?split=val&classes=id&per_class=1&image_size=48", None)
    image, label = dataset[3]
    assert image.size == (48, 48) and image.mode == "RGB"
    assert label == 3


def test_thousands_of_images_in_seconds():
    world.class_images.cache_clear()
    start = time.perf_counter()
    world.generate(world.world_concepts(), "train", seed=123, per_class=10)
    assert time.perf_counter() - start < 5.0  # ~0.5 s measured on 2 cores
