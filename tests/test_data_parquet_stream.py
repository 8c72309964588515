"""parquet: datasets stream by row group: a set larger than the memory a process may use opens and
trains; an epoch's order is a function of (seed, epoch), ranks are disjoint and an epoch reads each
row group about once; the preflight reads a sample; columns of another type are refused at open."""

import io
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from raymmft.commands import convert_parquet
from raymmft.data import build_loader, loader_workers, open_dataset
from raymmft.data import parquet as parquet_data
from raymmft.data.parquet import CHECK_GROUPS, imagefolder_to_parquet
from raymmft.errors import DataError

CLASSES = ["ant", "bee", "cat", "dog"]
BASE_WIDTH = 512


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def noise_jpeg(width: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (512, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def label_of_width(image: Image.Image) -> int:
    """The class an image was written for: each class has its own width."""
    return (image.width - BASE_WIDTH) // 8


def write_noise_folder(root: Path, per_class: int) -> None:
    """Random-noise JPEGs (~300 KB), class ``c`` ``BASE_WIDTH + 8c`` wide; every file is distinct
    (a counter after the JPEG's end, which decoders ignore), so Parquet cannot fold them."""
    for c, name in enumerate(CLASSES):
        base = noise_jpeg(BASE_WIDTH + 8 * c, seed=c)
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            (root / name / f"{k:04d}.jpg").write_bytes(base + (c * per_class + k).to_bytes(8))


# Runs in a subprocess: opens the dataset and loads one epoch under an address-space limit of
# `budget` bytes above what the process holds once its libraries are loaded and warmed.
LIMITED = """
import json, re, resource, sys
import numpy as np, pyarrow.parquet as pq
from raymmft.data import build_loader, open_dataset

mode, location, budget, base = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
pq.read_table(location, columns=["label"])  # starts Arrow's thread pools before the limit
size = int(re.search(r"VmSize:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + budget, resource.RLIM_INFINITY))
if mode == "whole":  # the former reader: every image's bytes in a list
    images = pq.read_table(location, columns=["image"]).column("image").to_pylist()
    print(json.dumps({"rows": len(images)}))
    sys.exit(0)
width_label = lambda image: (image.width - base) // 8
dataset = open_dataset("parquet:" + location, width_label)
loader = build_loader(dataset, 16, shuffle=True, seed=5, num_workers=0)
loader.sampler.set_epoch(1)
pairs = [(int(a), int(b)) for from_image, labels in loader for a, b in zip(from_image, labels)]
print(json.dumps({"order": list(loader.sampler), "pairs": pairs, "reads": dataset.group_reads,
                  "groups": len(set(dataset.row_groups().tolist()))}))
"""


def run_limited(mode: str, location: Path, budget: int) -> subprocess.CompletedProcess:
    # Address space close to the memory in use: large blocks mapped and unmapped, not kept in heaps
    env = {
        **os.environ,
        "ARROW_DEFAULT_MEMORY_POOL": "system",
        "MALLOC_ARENA_MAX": "2",
        "MALLOC_MMAP_THRESHOLD_": str(2**20),
    }
    return subprocess.run(
        [sys.executable, "-c", LIMITED, mode, str(location), str(budget), str(BASE_WIDTH)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_a_set_larger_than_the_memory_limit_streams_an_epoch(tmp_path):
    folder, shards = tmp_path / "folder", tmp_path / "shards"
    write_noise_folder(folder, per_class=340)
    imagefolder_to_parquet(folder, str(shards), rows_per_shard=200, shuffle_seed=0)
    on_disk = sum(p.stat().st_size for p in shards.glob("*.parquet"))
    budget = 180 * 2**20
    assert on_disk > 2 * budget  # ~410 MB of Parquet
    # The limit is real: reading the images whole, as the former reader did, fails under it.
    whole = run_limited("whole", shards, budget)
    assert whole.returncode != 0 and "MemoryError" in whole.stderr + whole.stdout
    streamed = run_limited("stream", shards, budget)
    assert streamed.returncode == 0, streamed.stderr[-2000:]
    result = json.loads(streamed.stdout)
    # Each image is the one its label names, and the labels are the ImageFolder's.
    assert all(from_image == label for from_image, label in result["pairs"])
    source = open_dataset(f"imagefolder:{folder}", None)
    by_path = {Path(p).relative_to(folder).as_posix(): int(c) for p, c in zip(source.sample_ids, source.labels)}  # fmt: skip
    table = pq.read_table(shards, columns=["path", "label"])
    assert [by_path[p] for p in table.column("path").to_pylist()] == table.column("label").to_pylist()  # fmt: skip
    labels = table.column("label").to_numpy()
    assert [label for _, label in result["pairs"]] == labels[result["order"]].tolist()
    assert sorted(result["order"]) == list(range(len(source)))
    assert result["reads"] == result["groups"] == -(-len(source) // parquet_data.ROWS_PER_GROUP)


def write_shards(root: Path, rows: int, *, rows_per_group: int, files: int = 2) -> None:
    """``rows`` tiny PNGs whose grey level is ``row % 250`` and label ``row % 4``, over ``files``
    files in row groups of ``rows_per_group``."""
    images = [png_bytes(k % 250) for k in range(rows)]
    table = pa.table({"image": images, "label": np.arange(rows) % 4})
    table = table.replace_schema_metadata({b"raymmft.classnames": json.dumps(CLASSES).encode()})
    root.mkdir(parents=True)
    bounds = np.linspace(0, rows, files + 1).astype(int)
    for f in range(files):
        part = table.slice(bounds[f], bounds[f + 1] - bounds[f])
        pq.write_table(part, root / f"part-{f:05d}.parquet", row_group_size=rows_per_group)


def png_bytes(value: int, size: int = 4) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (value, value, value)).save(buffer, "PNG")
    return buffer.getvalue()


def grey(image: Image.Image) -> int:
    return image.getpixel((0, 0))[0]


@pytest.fixture
def shards(tmp_path):
    write_shards(tmp_path / "s", 500, rows_per_group=20)  # 26 groups (the files split one)
    return tmp_path / "s"


def epoch(dataset, world_size: int, rank: int, *, seed=0, epoch=0, drop_last=False, **kwargs):
    loader = build_loader(
        dataset, 8, shuffle=True, seed=seed, rank=rank, world_size=world_size,
        drop_last=drop_last, **kwargs,
    )  # fmt: skip
    loader.sampler.set_epoch(epoch)
    return loader


def test_the_order_is_a_function_of_seed_and_epoch_and_ranks_are_disjoint(shards):
    dataset = open_dataset(f"parquet:{shards}", grey)
    one = list(epoch(dataset, 1, 0).sampler)
    assert sorted(one) == list(range(500)) and one != sorted(one)
    assert list(epoch(open_dataset(f"parquet:{shards}", grey), 1, 0).sampler) == one
    assert list(epoch(dataset, 1, 0, epoch=1).sampler) != one
    assert list(epoch(dataset, 1, 0, seed=1).sampler) != one
    # Each row group's samples come one after the other: an epoch reads it once.
    groups = dataset.row_groups()[one]
    assert (np.diff(groups) != 0).sum() == len(set(groups.tolist())) - 1
    for world_size in (2, 3):
        shares = [list(epoch(dataset, world_size, r).sampler) for r in range(world_size)]
        assert len({len(s) for s in shares}) == 1 and len(shares[0]) == -(-500 // world_size)
        assert set().union(*shares) == set(range(500))
        padded = sum(len(s) for s in shares) - 500  # 3 ranks: one sample repeated
        assert len(set(shares[0]) & set(shares[1])) == 0 and padded == (0 if world_size == 2 else 1)
        dropped = [list(epoch(dataset, world_size, r, drop_last=True).sampler) for r in range(world_size)]  # fmt: skip
        assert sum(len(s) for s in dropped) == len(set().union(*dropped)) == 500 // world_size * world_size  # fmt: skip
    # The batches hold the images and labels of the sampler's rows.
    loader = epoch(dataset, 2, 1)
    rows = dataset.rows[list(loader.sampler)]
    batches = list(loader)
    assert torch.cat([images for images, _ in batches]).tolist() == (rows % 250).tolist()
    assert torch.cat([labels for _, labels in batches]).tolist() == (rows % 4).tolist()


def test_an_epoch_reads_each_row_group_about_once(shards):
    dataset = open_dataset(f"parquet:{shards}", grey)
    groups = len(set(dataset.row_groups().tolist()))
    for world_size in (1, 2):
        reads = []
        for rank in range(world_size):
            before = dataset.group_reads
            labels = torch.cat([labels for _, labels in epoch(dataset, world_size, rank)])
            assert labels.tolist() == dataset.labels[list(epoch(dataset, world_size, rank).sampler)].tolist()  # fmt: skip
            reads.append(dataset.group_reads - before)
        assert max(reads) <= groups // world_size + 2 and sum(reads) <= groups + world_size
    # The same epoch in random order (torch's sampler) reads a group for almost every sample.
    random_order = torch.utils.data.DistributedSampler(dataset, num_replicas=1, rank=0, seed=0)
    before = dataset.group_reads
    for index in random_order:
        dataset[index]
    assert dataset.group_reads - before > 10 * groups


def test_the_preflight_reads_a_sample_of_row_groups(tmp_path):
    write_shards(tmp_path / "s", 1000, rows_per_group=10, files=1)
    path = tmp_path / "s" / "part-00000.parquet"
    table = pq.read_table(path)
    images = table.column("image").to_pylist()
    images[15] = b"not an image"  # row group 1: not among the sampled ones (0, 6, 13, ...)
    table = table.set_column(0, "image", pa.array(images, pa.binary()))
    pq.write_table(table, path, row_group_size=10)
    checked = open_dataset(f"parquet:{tmp_path / 's'}", None, check=True)
    assert checked.group_reads == CHECK_GROUPS and len(checked) == 1000
    message = f"cannot read image {tmp_path / 's'}#15: not a recognised image format"
    with pytest.raises(DataError, match=exactly(message)):
        open_dataset(f"parquet:{tmp_path / 's'}", None, check=True, check_all=True)
    with pytest.raises(DataError, match=exactly(message)):
        checked[15]
    skipping = open_dataset(f"parquet:{tmp_path / 's'}?skip_corrupt=true", None, check=True)
    assert skipping.skipped == [f"{tmp_path / 's'}#15"] and len(skipping) == 999
    assert skipping.group_reads == 100
    assert [grey(skipping[k][0]) for k in (14, 15)] == [14, 16]  # row 15 left out


def test_the_dataset_pickles_without_its_files_and_holds_little_per_row(shards):
    dataset = open_dataset(f"parquet:{shards}", None)
    dataset[0], dataset[499]
    copy = pickle.loads(pickle.dumps(dataset))
    assert "_files" not in copy.__dict__ and "_cache" not in copy.__dict__
    assert [grey(copy[k][0]) for k in (0, 260, 499)] == [0, 10, 249]
    per_row = sum(a.nbytes for a in (dataset.rows, dataset.labels)) / len(dataset)
    assert per_row == 16
    assert len(pickle.dumps(dataset)) < 16 * len(dataset) + 4096


def test_loaders_use_the_cpus_pin_for_cuda_and_keep_training_workers(shards):
    affinity = len(os.sched_getaffinity(0))
    assert loader_workers(3) == 3 and loader_workers(0) == 0
    assert loader_workers(None, cpus=1) == 0
    assert loader_workers(None) == min(affinity - 1, 8)
    assert loader_workers(None, cpus=2.5) == min(affinity, 2) - 1
    dataset = open_dataset(f"parquet:{shards}", grey)
    train = epoch(dataset, 1, 0, num_workers=1, device="cuda:0")
    assert train.num_workers == 1 and train.pin_memory and train.persistent_workers
    evaluation = build_loader(dataset, 8, shuffle=False, seed=0, num_workers=1, device="cpu")
    assert not evaluation.pin_memory and not evaluation.persistent_workers
    # Two epochs through one persistent worker process give the sampler's order.
    loader = epoch(dataset, 1, 0, num_workers=1)
    for e in (0, 1):
        loader.sampler.set_epoch(e)
        labels = torch.cat([labels for _, labels in loader]).tolist()
        assert labels == dataset.labels[list(loader.sampler)].tolist()


def test_the_converter_writes_small_row_groups():
    assert convert_parquet.ROWS_PER_GROUP == parquet_data.ROWS_PER_GROUP


# --- columns and class names of another type --------------------------------------------------------


def write_one(path: Path, columns: dict, metadata: bytes | None = b'["x", "y"]') -> str:
    path.mkdir(parents=True, exist_ok=True)
    table = pa.table(columns)
    if metadata is not None:
        table = table.replace_schema_metadata({b"raymmft.classnames": metadata})
    pq.write_table(table, path / "part-00000.parquet")
    return f"parquet:{path}"


@pytest.mark.parametrize(
    "columns, metadata, message",
    [
        ({"image": [1, 2], "label": [0, 1]}, b'["x", "y"]',
         "parquet {file}: image column 'image' has type int64; expected binary (the encoded image bytes)"),
        ({"image": ["a.png", "b.png"], "label": [0, 1]}, b'["x", "y"]',
         "parquet {file}: image column 'image' has type string; expected binary (the encoded image bytes)"),
        ({"image": [b"", b""], "label": [0.0, 1.0]}, b'["x", "y"]',
         "parquet {file}: label column 'label' has type double; expected integers"),
        ({"image": [b"", b""], "label": [0, 1]}, b"x, y",
         "parquet {dir}: the class names in the schema metadata (raymmft.classnames) are not JSON; "
         "expected a JSON list of strings"),
        ({"image": [b"", b""], "label": [0, 1]}, b'{"x": 0}',
         "parquet {dir}: the class names in the schema metadata (raymmft.classnames) are dict; "
         "expected a JSON list of strings"),
        ({"image": [b"", b""], "label": [0, 1]}, b'["x", 2]',
         "parquet {dir}: the class names in the schema metadata (raymmft.classnames) are a list "
         "with non-strings; expected a JSON list of strings"),
        ({"image": [b"", b""], "label": [0, 1]}, b'["x", "y", "x"]',
         "parquet {dir}: class name 'x' is listed twice in the schema metadata "
         "(raymmft.classnames, positions 0 and 2)"),
        ({"image": pa.array([png_bytes(1), None], pa.binary()), "label": [0, 1]}, b'["x", "y"]',
         "cannot read image {dir}#1: no image bytes (null)"),
    ],
    ids=["int-image", "string-image", "float-label", "not-json", "not-a-list", "not-strings",
         "duplicates", "null-image"],
)  # fmt: skip
def test_columns_and_class_names_of_another_type_are_refused_at_open(
    tmp_path, columns, metadata, message
):
    uri = write_one(tmp_path / "p", columns, metadata)
    where = {"dir": tmp_path / "p", "file": tmp_path / "p" / "part-00000.parquet"}
    with pytest.raises(DataError, match=exactly(message.format(**where))):
        open_dataset(uri, None)


def test_a_null_image_is_refused_only_where_selected_and_skipped_with_skip_corrupt(tmp_path):
    images = pa.array([png_bytes(1), None, png_bytes(3)], pa.binary())
    uri = write_one(tmp_path / "p", {"image": images, "label": [0, 1, 0]})
    assert len(open_dataset(uri + "?classes=x", None)) == 2  # the null row is a "y"
    skipping = open_dataset(uri + "?skip_corrupt=true", None, check=True)
    assert skipping.skipped == [f"{tmp_path / 'p'}#1"] and skipping.labels.tolist() == [0, 0]
    unchecked = open_dataset(uri + "?skip_corrupt=true", None)
    assert unchecked[1][1] == -1  # UNREADABLE: training replaces it, evaluation counts it
