"""imagefolder: and parquet: datasets, the converter between them, and their error messages."""

import argparse
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raymmft.commands import convert_parquet
from raymmft.data import open_dataset
from raymmft.data import shapes as world
from raymmft.data.parquet import imagefolder_to_parquet, read_parquet_classnames
from raymmft.errors import DataError

FOLDERS = {"blue_square": "blue square", "red_circle": "red circle", "yellow_star": "yellow star"}
PER_CLASS = 4


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def write_image_folder(root: Path) -> dict[str, np.ndarray]:
    """Shapes-world images as ``root/<folder>/<k>.png`` (one JPEG per class); returns the pixels
    each file decodes to, by path relative to ``root``."""
    pixels = {}
    for folder, concept in FOLDERS.items():
        (root / folder).mkdir(parents=True)
        for k, image in enumerate(world.class_images(concept, "train", 0, PER_CLASS)):
            suffix = "jpg" if k == PER_CLASS - 1 else "png"
            path = root / folder / f"{k}.{suffix}"
            Image.fromarray(image).save(path)
            with Image.open(path) as saved:  # JPEG is lossy: the reference is what the file holds
                pixels[f"{folder}/{path.name}"] = np.asarray(saved.convert("RGB"))
    (root / "red_circle" / "notes.txt").write_text("not an image, ignored by extension")
    return pixels


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "folder"
    return root, write_image_folder(root)


def relative(sample_id: str, root: Path) -> str:
    return Path(sample_id).relative_to(root).as_posix()


# --- imagefolder -----------------------------------------------------------------------------------


def test_image_folder_reads_every_image_with_its_folder_label(folder):
    root, pixels = folder
    dataset = open_dataset(f"imagefolder:{root}", transform=None)
    assert dataset.classnames == list(FOLDERS)
    assert len(dataset) == len(pixels) == 3 * PER_CLASS
    for k, sample_id in enumerate(dataset.sample_ids):
        image, label = dataset[k]
        name = relative(sample_id, root)
        assert name.split("/")[0] == dataset.classnames[label]
        assert np.array_equal(np.asarray(image), pixels[name])
    assert dataset.num_skipped == 0


def test_classnames_file_names_the_classes(folder, tmp_path):
    root, _ = folder
    names = tmp_path / "names.txt"
    names.write_text("blue square\nred circle\n  yellow star  \n\n")
    dataset = open_dataset({"uri": f"imagefolder:{root}", "classnames_file": str(names)}, None)
    assert dataset.classnames == ["blue square", "red circle", "yellow star"]
    short = tmp_path / "short.txt"
    short.write_text("blue square\nred circle\n")
    with pytest.raises(
        DataError,
        match=exactly(f"classnames file {short} has 2 names but {root} has 3 class folders"),
    ):
        open_dataset({"uri": f"imagefolder:{root}", "classnames_file": str(short)}, None)
    missing = tmp_path / "missing.txt"
    with pytest.raises(DataError, match=exactly(f"classnames file does not exist: {missing}")):
        open_dataset({"uri": f"imagefolder:{root}", "classnames_file": str(missing)}, None)


def test_imagenet_wnid_folders_get_open_clip_names(tmp_path):
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES as OPEN_CLIP_NAMES

    from raymmft.text import imagenet_classnames

    IMAGENET_CLASSNAMES = imagenet_classnames()
    # open_clip's list with its two repeated names told apart (else two prompts are one)
    differ = [i for i, (a, b) in enumerate(zip(IMAGENET_CLASSNAMES, OPEN_CLIP_NAMES)) if a != b]
    assert differ == [744, 836] and len(set(IMAGENET_CLASSNAMES)) == 1000

    png = tmp_path / "tiny.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(png)
    wnids = [f"n{10_000_000 + 7 * k:08d}" for k in range(1000)]
    for wnid in wnids:
        (tmp_path / "imagenet" / wnid).mkdir(parents=True)
        (tmp_path / "imagenet" / wnid / "a.png").write_bytes(png.read_bytes())
    dataset = open_dataset(
        f"imagefolder:{tmp_path / 'imagenet'}?classes=near_ood",
        None,
        id_classnames=list(IMAGENET_CLASSNAMES[:990]),
    )
    assert dataset.classnames == list(IMAGENET_CLASSNAMES[990:])
    # Folder names (wnids) select classes too.
    by_wnid = open_dataset(f"imagefolder:{tmp_path / 'imagenet'}?classes={wnids[1]}", None)
    assert by_wnid.classnames == [IMAGENET_CLASSNAMES[1]]


def test_class_selection_and_carving(folder):
    root, _ = folder
    picked = open_dataset(f"imagefolder:{root}?classes=yellow_star,blue_square", None)
    assert picked.classnames == ["yellow_star", "blue_square"]
    assert [relative(s, root).split("/")[0] for s in picked.sample_ids] == (
        ["blue_square"] * PER_CLASS + ["yellow_star"] * PER_CLASS
    )
    assert picked.labels.tolist() == [1] * PER_CLASS + [0] * PER_CLASS
    splits = {
        split: set(open_dataset(f"imagefolder:{root}?split={split}&val_fraction=0.25"
                                f"&test_fraction=0.25", None).sample_ids)
        for split in ("train", "val", "test")
    }  # fmt: skip
    assert [len(splits[s]) for s in ("train", "val", "test")] == [6, 3, 3]
    assert set.union(*splits.values()) == set(open_dataset(f"imagefolder:{root}", None).sample_ids)
    with pytest.raises(
        DataError,
        match=exactly(
            f"imagefolder:{root}?classes=green_cross: unknown class 'green_cross' "
            f"(classes: blue_square, red_circle, yellow_star)"
        ),
    ):
        open_dataset(f"imagefolder:{root}?classes=green_cross", None)
    with pytest.raises(
        DataError,
        match=exactly(
            f"imagefolder:{root}?classes=near_ood: classes 'near_ood' needs the ID class names "
            f"(open it with id_classnames=...)"
        ),
    ):
        open_dataset(f"imagefolder:{root}?classes=near_ood", None)


def test_image_folder_path_errors(tmp_path):
    with pytest.raises(DataError, match=exactly(f"dataset path does not exist: {tmp_path / 'no'}")):
        open_dataset(f"imagefolder:{tmp_path / 'no'}", None)
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(
        DataError, match=exactly(f"dataset path is not a folder: {tmp_path / 'file.png'}")
    ):
        open_dataset(f"imagefolder:{tmp_path / 'file.png'}", None)
    (tmp_path / "bare").mkdir()
    with pytest.raises(DataError, match=exactly(f"no class folders in {tmp_path / 'bare'}")):
        open_dataset(f"imagefolder:{tmp_path / 'bare'}", None)


def test_empty_class_folder_is_named(folder):
    root, _ = folder
    (root / "zebra" / "sub").mkdir(parents=True)
    (root / "zebra" / "readme.md").write_text("no images here")
    with pytest.raises(DataError, match=exactly(f"empty class folder: {root / 'zebra'}")):
        open_dataset(f"imagefolder:{root}", None)


def test_unreadable_images_fail_at_open_or_are_skipped_and_counted(folder):
    root, pixels = folder
    garbage = root / "red_circle" / "garbage.png"
    garbage.write_bytes(b"this is not a png")
    with pytest.raises(
        DataError, match=exactly(f"cannot read image {garbage}: not a recognised image format")
    ):
        open_dataset(f"imagefolder:{root}", None, check=True)
    # Truncated: the header reads, the pixels do not.
    full = (root / "blue_square" / "0.png").read_bytes()
    truncated = root / "blue_square" / "truncated.png"
    truncated.write_bytes(full[: len(full) // 2])
    dataset = open_dataset(f"imagefolder:{root}?skip_corrupt=true", None, check=True)
    assert dataset.num_skipped == 2
    assert sorted(dataset.skipped) == sorted([str(truncated), str(garbage)])
    assert len(dataset) == len(pixels)
    garbage.unlink()
    strict = open_dataset(f"imagefolder:{root}", None, check=True)  # the header check passes...
    k = strict.sample_ids.index(str(truncated))
    with pytest.raises(
        DataError, match=exactly(f"cannot read image {truncated}: image file is truncated")
    ):
        strict[k]  # ...and reading it fails, naming the file


# --- parquet ---------------------------------------------------------------------------------------


def test_image_folder_to_parquet_round_trip(folder, tmp_path):
    root, pixels = folder
    out = tmp_path / "shards"
    shards = imagefolder_to_parquet(root, str(out), rows_per_shard=5)
    assert [Path(s).name for s in shards] == [f"part-0000{k}.parquet" for k in range(3)]
    assert [pq.read_metadata(s).num_rows for s in shards] == [5, 5, 2]
    assert read_parquet_classnames(f"parquet:{out}") == list(FOLDERS)
    folder_set = open_dataset(f"imagefolder:{root}", None)
    parquet_set = open_dataset(f"parquet:{out}", None)
    assert parquet_set.classnames == folder_set.classnames
    assert parquet_set.labels.tolist() == folder_set.labels.tolist()
    for k, sample_id in enumerate(parquet_set.sample_ids):
        name = re.fullmatch(rf"{re.escape(str(out))}#{k} \((.+)\)", sample_id).group(1)
        image, label = parquet_set[k]
        assert np.array_equal(np.asarray(image), pixels[name])  # JPEG bytes are kept as is
        assert name.split("/")[0] == parquet_set.classnames[label]


def test_shuffled_shards_hold_the_same_rows(folder, tmp_path):
    root, pixels = folder
    imagefolder_to_parquet(root, str(tmp_path / "s"), rows_per_shard=4, shuffle_seed=3)
    table = pq.read_table(tmp_path / "s")
    paths = table.column("path").to_pylist()
    assert sorted(paths) == sorted(pixels) and paths != sorted(paths)
    for path, label in zip(paths, table.column("label").to_pylist()):
        assert list(FOLDERS)[label] == path.split("/")[0]
    # A file:// URI goes through pyarrow's filesystem resolution, as s3:// and gs:// do.
    via_uri = open_dataset(f"parquet:file://{tmp_path / 's'}?split=val", None)
    assert len(via_uri) == 3 and via_uri.classnames == list(FOLDERS)


def test_converter_refuses_to_mix_shards(folder, tmp_path):
    root, _ = folder
    imagefolder_to_parquet(root, str(tmp_path / "out"), rows_per_shard=100)
    with pytest.raises(
        DataError, match=exactly(f"output folder already holds parquet shards: {tmp_path / 'out'}")
    ):
        imagefolder_to_parquet(root, str(tmp_path / "out"), rows_per_shard=100)


def write_table(path: Path, columns: dict, classnames=None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    metadata = {b"raymmft.classnames": str(classnames).replace("'", '"').encode()}
    table = pa.table(columns).replace_schema_metadata(metadata if classnames else None)
    pq.write_table(table, path / "part-00000.parquet")


def png_bytes(value: int) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (value, value, value)).save(buffer, "PNG")
    return buffer.getvalue()


def test_parquet_column_and_class_name_errors(tmp_path):
    images = [png_bytes(10), png_bytes(20)]
    write_table(tmp_path / "nolabel", {"image": images, "path": ["a", "b"]}, ["x", "y"])
    with pytest.raises(
        DataError,
        match=exactly(
            f"parquet {tmp_path / 'nolabel' / 'part-00000.parquet'}: label column 'label' missing "
            "(columns: image, path)"
        ),
    ):
        open_dataset(f"parquet:{tmp_path / 'nolabel'}", None)
    write_table(tmp_path / "strlabel", {"image": images, "label": ["x", "y"]}, ["x", "y"])
    with pytest.raises(
        DataError,
        match=exactly(
            f"parquet {tmp_path / 'strlabel' / 'part-00000.parquet'}: label column 'label' has "
            "type string; "
            f"expected integers"
        ),
    ):
        open_dataset(f"parquet:{tmp_path / 'strlabel'}", None)
    write_table(tmp_path / "nonames", {"image": images, "label": [0, 1]})
    with pytest.raises(
        DataError,
        match=exactly(
            f"parquet {tmp_path / 'nonames'}: no class names in the schema metadata "
            f"(raymmft.classnames); set classnames_file"
        ),
    ):
        open_dataset(f"parquet:{tmp_path / 'nonames'}", None)
    names = tmp_path / "names.txt"
    names.write_text("dark\n")
    with pytest.raises(
        DataError,
        match=exactly(f"parquet {tmp_path / 'nonames'}: label 1 out of range for 1 class names"),
    ):
        open_dataset(
            {"uri": f"parquet:{tmp_path / 'nonames'}", "classnames_file": str(names)}, None
        )
    names.write_text("dark\nlight\n")
    named = open_dataset(
        {"uri": f"parquet:{tmp_path / 'nonames'}", "classnames_file": str(names)}, None
    )
    assert named.classnames == ["dark", "light"]
    assert [np.asarray(named[k][0])[0, 0, 0] for k in range(2)] == [10, 20]


def test_parquet_custom_columns_and_corrupt_rows(tmp_path):
    images = [png_bytes(10), b"garbage", png_bytes(30)]
    columns = {"img": images, "y": [0, 1, 0]}
    write_table(tmp_path / "custom", columns, ["dark", "light"])
    uri = f"parquet:{tmp_path / 'custom'}?image_column=img&label_column=y"
    with pytest.raises(
        DataError,
        match=exactly(f"cannot read image {tmp_path / 'custom'}#1: not a recognised image format"),
    ):
        open_dataset(uri, None, check=True)
    dataset = open_dataset(uri + "&skip_corrupt=true", None, check=True)
    assert dataset.skipped == [f"{tmp_path / 'custom'}#1"]
    assert len(dataset) == 2 and dataset.labels.tolist() == [0, 0]
    with pytest.raises(DataError, match=exactly(f"dataset path does not exist: {tmp_path / 'x'}")):
        open_dataset(f"parquet:{tmp_path / 'x'}", None)


def test_convert_parquet_command(folder, tmp_path, capsys):
    root, pixels = folder
    parser = argparse.ArgumentParser()
    convert_parquet.add_arguments(parser)
    args = parser.parse_args([str(root), str(tmp_path / "cli"), "--rows-per-shard", "7"])
    assert convert_parquet.run(args) == 0
    assert capsys.readouterr().out == (
        f"wrote {len(pixels)} images of 3 classes in 2 shards to {tmp_path / 'cli'}\n"
    )
    assert len(open_dataset(f"parquet:{tmp_path / 'cli'}", None)) == len(pixels)
