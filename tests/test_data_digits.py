"""builtin:digits: real pixels, class-stratified carving, ID/OoD by class."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from raymmft.data import open_dataset
from raymmft.data.digits import CLASSNAMES


@pytest.fixture(scope="module")
def reference():
    bunch = load_digits()
    return bunch.images, bunch.target


def source_index(sample_id: str) -> int:
    return int(sample_id.removeprefix("digits/"))


def test_pixels_and_labels_match_sklearn(reference):
    raw, target = reference
    dataset = open_dataset("builtin:digits?split=val", transform=None)
    assert dataset.classnames == list(CLASSNAMES)
    assert dataset.pixels.shape[1:] == (32, 32, 3)
    for k, sample_id in enumerate(dataset.sample_ids):
        i = source_index(sample_id)
        assert dataset.labels[k] == target[i]
        expected = np.rint(raw[i] * 255 / 16)
        # Upscaled by pixel repetition: every 4x4 block is the original pixel, grey in RGB.
        assert np.array_equal(dataset.pixels[k][::4, ::4, 0], expected)
        assert np.array_equal(dataset.pixels[k][3::4, 3::4, 1], expected)
        assert (dataset.pixels[k] == dataset.pixels[k][..., :1]).all()


def test_splits_are_disjoint_cover_the_source_and_follow_the_fractions(reference):
    _, target = reference
    ids = {
        split: {
            source_index(s) for s in open_dataset(f"builtin:digits?split={split}", None).sample_ids
        }
        for split in ("train", "val", "test")
    }
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"]
    assert not ids["val"] & ids["test"]
    assert ids["train"] | ids["val"] | ids["test"] == set(range(len(target)))
    for c in range(10):
        n = int((target == c).sum())
        assert sum(target[i] == c for i in ids["val"]) == round(0.2 * n)
        assert sum(target[i] == c for i in ids["test"]) == round(0.2 * n)


def test_carving_is_deterministic_per_seed():
    first = open_dataset("builtin:digits?split=val&seed=4", None).sample_ids
    assert open_dataset("builtin:digits?split=val&seed=4", None).sample_ids == first
    assert open_dataset("builtin:digits?split=val&seed=5", None).sample_ids != first


def test_fewer_classes_do_not_move_samples_between_splits():
    every = open_dataset("builtin:digits?split=test", None)
    fives = open_dataset("builtin:digits?split=test&classes=five", None)
    assert fives.sample_ids == [
        s for s, label in zip(every.sample_ids, every.labels) if every.classnames[label] == "five"
    ]
    assert fives.labels.tolist() == [0] * len(fives)


def test_ood_classes_never_appear_in_id_splits(reference):
    _, target = reference
    id_sets = [open_dataset(f"builtin:digits?split={s}&classes=id", None) for s in ("train", "val")]
    for dataset in id_sets:
        assert dataset.classnames == ["zero", "one", "two", "three", "four", "five"]
        assert {int(target[source_index(s)]) for s in dataset.sample_ids} == set(range(6))
    near = open_dataset(
        "builtin:digits?split=val&classes=near_ood", None, id_classnames=id_sets[0].classnames
    )
    assert near.classnames == ["six", "seven", "eight", "nine"]
    assert {int(target[source_index(s)]) for s in near.sample_ids} == {6, 7, 8, 9}


def test_id_classes_are_configurable():
    ids = open_dataset("builtin:digits?split=train&classes=nine,one", None)
    assert ids.classnames == ["nine", "one"]
    near = open_dataset(
        "builtin:digits?split=val&classes=near_ood", None, id_classnames=ids.classnames
    )
    assert near.classnames == ["zero", "two", "three", "four", "five", "six", "seven", "eight"]


def test_caps_take_subsets_of_the_split():
    val = set(open_dataset("builtin:digits?split=val", None).sample_ids)
    capped = open_dataset("builtin:digits?split=val&per_class=5", None)
    assert set(capped.sample_ids) <= val
    assert np.bincount(capped.labels).tolist() == [5] * 10
    some = open_dataset("builtin:digits?split=val&num_samples=17", None)
    assert len(some) == 17 and set(some.sample_ids) <= val
