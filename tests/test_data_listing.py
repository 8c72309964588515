"""Listings once (issue 26, item 4): class names without listing files (``classnames_of``, equal
to what opening gives for every kind), an ImageFolder listing stored once (locally or in a bucket)
that opens the same dataset as a walk without walking, each root walked once per preflight, and a
listing whose folder lost a file failing where that file is read."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raymmft.data import classnames_of, open_dataset
from raymmft.data.dataset import UNREADABLE, PackedNames
from raymmft.data.imagefolder import list_image_folder
from raymmft.data.listing import (
    list_datasets,
    listing_bytes,
    listing_name,
    read_listing,
    stored_listings,
    write_listing,
    write_listings,
)
from raymmft.data.parquet import imagefolder_to_parquet
from raymmft.data.spec import DatasetSpec
from raymmft.errors import DataError

CLASSES = ("blue_square", "red_circle", "yellow_star")


def _png(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 6), (shade, 0, 0)).save(path)


@pytest.fixture
def folder(tmp_path) -> Path:
    """Three classes of 8 images, some in nested folders."""
    root = tmp_path / "data"
    for c, name in enumerate(CLASSES):
        for i in range(8):
            sub = "deep/er/" if i % 3 == 0 else ""
            _png(root / name / f"{sub}{i}.png", 30 * c + i)
    return root


@pytest.fixture
def walks(monkeypatch):
    """How many folders were read (``os.scandir`` calls) since the fixture started."""
    count = {"n": 0}
    real = os.scandir

    def counting(path="."):
        count["n"] += 1
        return real(path)

    monkeypatch.setattr(os, "scandir", counting)
    return count


def _same(a, b) -> None:
    assert list(a.sample_ids) == list(b.sample_ids)
    assert a.labels.tolist() == b.labels.tolist()
    assert a.classnames == b.classnames
    assert a.skip_corrupt == b.skip_corrupt


# --- class names without listing ---------------------------------------------------------------


BUILTIN_SPECS = [
    ("builtin:shapes?split=val", None),
    ("builtin:shapes?split=val&classes=id", None),
    ("builtin:shapes?split=val&classes=far_ood", None),
    ("builtin:shapes?split=val&classes=near_ood", None),
    ("builtin:shapes?split=val&classes=near_ood", ["red_circle", "blue_square"]),
    ("builtin:shapes?split=val&classes=blue square,red circle", None),
    ("builtin:digits", None),
    ("builtin:digits?classes=id&split=train", None),
    ("builtin:digits?classes=near_ood", None),
    ("builtin:digits?classes=near_ood", ["zero", "one", "two"]),
    ("builtin:digits?classes=seven,three", None),
]


@pytest.mark.parametrize("spec,ids", BUILTIN_SPECS)
def test_classnames_of_builtins_equal_the_opened_datasets(spec, ids):
    opened = open_dataset(spec, None, id_classnames=ids).classnames
    assert classnames_of(spec, id_classnames=ids) == opened
    assert len(opened) > 0


def test_classnames_of_image_folders_equal_the_opened_datasets_with_one_listdir(
    folder, tmp_path, walks
):
    names = tmp_path / "names.txt"
    names.write_text("blue square\nred circle\nyellow star\n")
    specs = [
        (f"imagefolder:{folder}", None),
        (f"imagefolder:{folder}?split=val", None),
        (f"imagefolder:{folder}?split=test&val_fraction=0.3&test_fraction=0.3&seed=4", None),
        (f"imagefolder:{folder}?classes=yellow_star,blue_square&split=train", None),
        (f"imagefolder:{folder}?classes=near_ood", ["red_circle"]),
        ({"uri": f"imagefolder:{folder}", "classnames_file": str(names)}, None),
        ({"uri": f"imagefolder:{folder}", "classnames_file": str(names), "split": "val"}, None),
        (
            {"uri": f"imagefolder:{folder}", "classnames_file": str(names), "classes": "near_ood"},
            ["red circle", "elsewhere"],
        ),
    ]
    for spec, ids in specs:
        opened = open_dataset(spec, None, id_classnames=ids).classnames
        walks["n"] = 0
        assert classnames_of(spec, id_classnames=ids) == opened
        assert walks["n"] == 1  # the root's class folders, nothing below


def test_classnames_of_imagenet_wnid_folders(tmp_path, walks):
    from raymmft.text import imagenet_classnames

    png = tmp_path / "tiny.png"
    _png(png, 9)
    wnids = [f"n{10_000_000 + 7 * k:08d}" for k in range(1000)]
    for wnid in wnids:
        (tmp_path / "imagenet" / wnid).mkdir(parents=True)
        (tmp_path / "imagenet" / wnid / "a.png").write_bytes(png.read_bytes())
    root = tmp_path / "imagenet"
    ids = imagenet_classnames()[:990]
    for spec, id_names in [
        (f"imagefolder:{root}", None),
        (f"imagefolder:{root}?classes=near_ood", ids),
        (f"imagefolder:{root}?classes={wnids[1]},{wnids[0]}", None),  # by folder name
        (f"imagefolder:{root}?classes={imagenet_classnames()[5]}", None),  # by class name
    ]:
        opened = open_dataset(spec, None, id_classnames=id_names).classnames
        walks["n"] = 0
        assert classnames_of(spec, id_classnames=id_names) == opened
        assert walks["n"] == 1
    assert (
        classnames_of(f"imagefolder:{root}?classes=near_ood", id_classnames=ids)
        == (imagenet_classnames()[990:])
    )


def test_classnames_of_parquet_equal_the_opened_datasets(folder, tmp_path):
    out = tmp_path / "pq"
    imagefolder_to_parquet(folder, str(out), rows_per_shard=10)
    names = tmp_path / "names.txt"
    names.write_text("blue square\nred circle\nyellow star\n")
    for spec, ids in [
        (f"parquet:{out}", None),
        (f"parquet:{out}?split=val&classes=yellow_star,red_circle", None),
        (f"parquet:{out}?classes=near_ood", ["blue_square"]),
        ({"uri": f"parquet:{out}", "classnames_file": str(names), "split": "train"}, None),
    ]:
        opened = open_dataset(spec, None, id_classnames=ids).classnames
        assert classnames_of(spec, id_classnames=ids) == opened


def test_classnames_of_says_what_opening_says(folder, tmp_path):
    for spec in [
        f"imagefolder:{tmp_path / 'missing'}",
        f"imagefolder:{folder}?classes=green_cross",
        f"imagefolder:{folder}?classes=near_ood",
        "builtin:shapes?split=val&classes=near_ood",
    ]:
        ids = None
        if spec.startswith("builtin"):  # every concept an ID class
            ids = list(
                DatasetSpec.model_validate(f"{spec.split('&')[0]}&classes=all").builtin_classes()
            )
        with pytest.raises(DataError) as opened:
            open_dataset(spec, None, id_classnames=ids)
        with pytest.raises(DataError) as named:
            classnames_of(spec, id_classnames=ids)
        assert str(named.value) == str(opened.value)


# --- a listing, stored and opened --------------------------------------------------------------


def _specs(root: Path, names: Path) -> list[tuple[object, list[str] | None]]:
    return [
        (f"imagefolder:{root}", None),
        (f"imagefolder:{root}?split=train", None),
        (f"imagefolder:{root}?split=val&seed=3", None),
        (f"imagefolder:{root}?classes=yellow_star,blue_square&per_class=3", None),
        (f"imagefolder:{root}?num_samples=7&seed=2", None),
        (f"imagefolder:{root}?classes=near_ood", ["blue_square"]),
        ({"uri": f"imagefolder:{root}", "classnames_file": str(names), "split": "test"}, None),
        ({"uri": f"imagefolder:{root}", "skip_corrupt": True}, None),
    ]


def test_a_stored_listing_opens_the_walked_dataset_without_a_walk(folder, tmp_path, walks):
    names = tmp_path / "names.txt"
    names.write_text("blue square\nred circle\nyellow star\n")
    walks["n"] = 0
    listing = list_image_folder(folder)
    assert walks["n"] == len(CLASSES) + 1 + 2 * len(CLASSES)  # root, classes, deep/er in each
    stored = write_listing(listing, tmp_path / "prepared" / "listings" / "train.parquet")
    back = read_listing(stored)
    assert (back.root, back.folders, back.files) == (listing.root, listing.folders, listing.files)
    assert back.labels.tolist() == listing.labels.tolist()
    for spec, ids in _specs(folder, names):
        walked = open_dataset(spec, None, id_classnames=ids)
        walks["n"] = 0
        for given in (stored, stored.uri, listing):
            opened = open_dataset(spec, None, id_classnames=ids, listings={str(folder): given})
            _same(opened, walked)
            assert classnames_of(spec, id_classnames=ids, listings={str(folder): given}) == (
                walked.classnames
            )
        assert walks["n"] == 0


def test_a_listing_is_compact(tmp_path):
    root = tmp_path / "big"
    png = tmp_path / "one.png"
    _png(png, 1)
    data = png.read_bytes()
    for c in range(20):
        (root / f"n{c:08d}").mkdir(parents=True)
        for i in range(250):
            (root / f"n{c:08d}" / f"n{c:08d}_{i:05d}.JPEG").write_bytes(data)
    size = len(listing_bytes(list_image_folder(root)))
    assert size / 5000 < 12, f"{size / 5000:.1f} bytes a file"


def test_a_listing_of_a_folder_that_lost_a_file_fails_where_the_file_is_read(folder, tmp_path):
    stored = write_listing(list_image_folder(folder), tmp_path / "listing.parquet")
    gone = folder / "red_circle" / "4.png"
    gone.unlink()
    listings = {str(folder): stored}
    dataset = open_dataset(f"imagefolder:{folder}", None, listings=listings)
    assert len(dataset) == 3 * 8  # the folder as listed
    k = dataset.sample_ids.index(str(gone))
    with pytest.raises(DataError) as caught:
        dataset[k]
    assert str(caught.value) == (
        f"cannot read image {gone}: [Errno 2] No such file or directory: '{gone}'"
    )
    dataset[k + 1]  # the others read
    skipping = open_dataset(f"imagefolder:{folder}?skip_corrupt=true", None, listings=listings)
    assert skipping[k][1] == UNREADABLE
    # the preflight's check (a listing it made itself is never stale) names it too
    with pytest.raises(DataError) as checked:
        open_dataset(f"imagefolder:{folder}", None, listings=listings, check=True)
    assert str(checked.value) == str(caught.value)


def test_a_file_name_that_is_not_utf8_is_named_when_the_listing_is_stored(folder, tmp_path):
    bad = os.fsencode(folder / "red_circle") + b"/caf\xe9.png"  # Latin-1, as an old archive's
    with open(bad, "wb") as out:
        out.write((folder / "red_circle" / "1.png").read_bytes())
    listing = list_image_folder(folder)
    assert len(listing.files) == 3 * 8 + 1  # listed: the name is a file system name
    with pytest.raises(DataError) as caught:
        write_listing(listing, tmp_path / "listing.parquet")
    message = f"{folder}: the file name red_circle/caf\\xe9.png is not UTF-8; rename it"
    assert str(caught.value) == message
    assert not (tmp_path / "listing.parquet").exists()
    with pytest.raises(DataError) as listed:  # the preflight's listing: before any worker starts
        list_datasets([DatasetSpec(uri=f"imagefolder:{folder}")])
    assert str(listed.value) == message


def test_a_listing_of_another_folder_or_not_a_listing_is_refused(folder, tmp_path):
    other = tmp_path / "other"
    _png(other / "cat" / "0.png", 1)
    stored = write_listing(list_image_folder(other), tmp_path / "other.parquet")
    with pytest.raises(DataError) as caught:
        open_dataset(f"imagefolder:{folder}", None, listings={str(folder): stored})
    assert str(caught.value) == (
        f"imagefolder:{folder}: the listing given is of {other}, not of {folder}"
    )
    with pytest.raises(DataError) as named:
        classnames_of(f"imagefolder:{folder}", listings={str(folder): stored})
    assert str(named.value) == str(caught.value)
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=f"^{junk} is not an ImageFolder listing"):
        open_dataset(f"imagefolder:{folder}", None, listings={str(folder): str(junk)})


# --- once per search ---------------------------------------------------------------------------


def test_each_root_is_listed_once_and_stored_once(folder, tmp_path, monkeypatch):
    import raymmft.data.listing as listing_module

    other = tmp_path / "ood"
    _png(other / "cat" / "0.png", 1)
    specs = [
        DatasetSpec.model_validate(s)
        for s in [
            f"imagefolder:{folder}?split=train",
            f"imagefolder:{folder}?split=val",
            f"imagefolder:{folder}?classes=near_ood",
            f"imagefolder:{other}",
            "builtin:shapes?split=val&classes=far_ood",
        ]
    ]
    calls = []
    real = listing_module.list_image_folder
    monkeypatch.setattr(
        listing_module, "list_image_folder", lambda root: calls.append(root) or real(root)
    )
    listed = list_datasets(specs)
    assert calls == [str(folder), str(other)] and list(listed) == calls
    directory = tmp_path / "exp" / "prepared" / "listings"
    uris = write_listings(specs, directory, listed=listed)
    assert len(calls) == 2  # the preflight's listings are written, not walked again
    assert uris == {root: str(directory / listing_name(root)) for root in calls}
    assert sorted(os.listdir(directory)) == sorted(listing_name(root) for root in calls)
    # a resumed search keeps its listings: no walk, nothing rewritten
    before = {p: os.stat(directory / p).st_mtime_ns for p in os.listdir(directory)}
    assert write_listings(specs, directory) == uris
    assert len(calls) == 2
    assert {p: os.stat(directory / p).st_mtime_ns for p in os.listdir(directory)} == before
    # without the preflight's listings, a root is walked once here
    assert write_listings(specs, tmp_path / "fresh") is not None and len(calls) == 4
    # the final evaluation finds what the search stored, without a walk
    assert stored_listings(specs, directory) == uris and len(calls) == 4
    assert stored_listings(specs, tmp_path / "none") == {}


def test_a_listing_in_a_bucket(folder, s3, monkeypatch):
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    directory = s3.uri("unit/listings", query=True)
    specs = [
        DatasetSpec.model_validate(f"imagefolder:{folder}?split={s}") for s in ("train", "val")
    ]
    uris = write_listings(specs, directory)
    assert list(uris) == [str(folder)] and uris[str(folder)].startswith("s3://raymmft/unit/")
    assert list(s3.keys("unit/listings/")) == [f"unit/listings/{listing_name(str(folder))}"]
    for spec in specs:
        walked = open_dataset(spec, None)
        _same(open_dataset(spec, None, listings=uris), walked)
        assert classnames_of(spec, listings=uris) == walked.classnames
    assert np.array_equal(read_listing(uris[str(folder)]).labels, list_image_folder(folder).labels)


def test_packed_names_read_back_every_name_and_select_by_index():
    names = ["n01/a.JPEG", "n01/b é.png", "", "n02/" + os.fsdecode(b"\xff\xfe.jpg"), "n02/z.png"]
    packed = PackedNames.of(names)
    assert list(packed) == names and len(packed) == 5
    assert packed[-1] == "n02/z.png" and packed[1:3] == names[1:3]
    with pytest.raises(IndexError):
        packed[5]
    chosen = packed.take(np.array([4, 3, 0])).with_prefix("/data/")
    assert list(chosen) == ["/data/n02/z.png", "/data/" + names[3], "/data/n01/a.JPEG"]
    assert packed.take([]) == [] and chosen == [
        "/data/n02/z.png",
        "/data/" + names[3],
        "/data/n01/a.JPEG",
    ]
    # two arrays, no Python string per name: 1 B a character and 8 B an offset
    assert packed.data.nbytes == sum(len(os.fsencode(n)) for n in names)
    assert packed.offsets.nbytes == 8 * 6


def test_packed_names_take_across_chunks_equals_picking_one_by_one(monkeypatch):
    from raymmft.data import dataset

    rng = np.random.default_rng(0)
    names = [f"n{k % 7:02d}/" + "x" * int(rng.integers(0, 12)) + f"{k}.JPEG" for k in range(50)]
    names[9] = ""
    packed = PackedNames.of(names)
    picks = rng.integers(0, 50, size=37)  # repeats and any order
    monkeypatch.setattr(dataset, "TAKE_CHUNK", 4)  # 10 chunks, the last of one string
    taken = packed.take(picks)
    assert list(taken) == [names[k] for k in picks]
    assert taken.data.nbytes == sum(len(names[k]) for k in picks)


def test_a_dataset_opened_from_a_stored_listing_holds_packed_paths(folder, tmp_path):
    stored = write_listing(list_image_folder(folder), tmp_path / "train.parquet")
    spec = DatasetSpec(uri=f"imagefolder:{folder}")
    opened = open_dataset(spec, None, listings={str(folder): stored})
    walked = open_dataset(spec, None)
    assert isinstance(opened.sample_ids, PackedNames)  # not a list of str per process
    assert list(opened.sample_ids) == list(walked.sample_ids)
    assert all(os.path.isfile(p) for p in opened.sample_ids)


def test_packed_names_take_holds_indices_for_one_chunk_of_names_only():
    import tracemalloc

    names = [f"n{k % 1000:08d}/n{k % 1000:08d}_{k}.JPEG" for k in range(100_000)]
    packed = PackedNames.of(names)
    picks = np.arange(100_000)[::-1]
    tracemalloc.start()
    taken = packed.take(picks)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert taken[0] == names[-1] and taken[-1] == names[0]
    kept = taken.data.nbytes + taken.offsets.nbytes
    # an index per byte of every name would be 8 B x 3.1 MB of names for each of its arrays
    assert peak - kept < 8 * 1024 * 1024, peak - kept
