"""Every kind through open_clip's preprocessing, and per-worker loaders that shard an epoch."""

import os
import re

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from raymmft.data import build_loader, open_dataset, per_worker_batch
from raymmft.data import shapes as world
from raymmft.data.parquet import imagefolder_to_parquet
from raymmft.errors import ConfigError

CLIP_MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(3, 1, 1)
CLIP_STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)


@pytest.fixture(scope="module")
def transform():
    return open_clip.image_transform(32, is_train=False)


@pytest.fixture(scope="module")
def file_sources(tmp_path_factory):
    """A small ImageFolder of world images and its Parquet conversion."""
    root = tmp_path_factory.mktemp("sources")
    for concept in ("green cross", "white ring"):
        folder = root / "folder" / concept.replace(" ", "_")
        folder.mkdir(parents=True)
        for k, image in enumerate(world.class_images(concept, "val", 0, 3)):
            Image.fromarray(image).save(folder / f"{k}.png")
    imagefolder_to_parquet(root / "folder", str(root / "parquet"), rows_per_shard=4)
    return {
        "imagefolder": f"imagefolder:{root / 'folder'}",
        "parquet": f"parquet:{root / 'parquet'}",
    }


@pytest.mark.parametrize(
    "source",
    ["builtin:shapes?split=val&classes=id&per_class=2", "builtin:digits?split=test&per_class=2",
     "imagefolder", "parquet"],
)  # fmt: skip
def test_every_kind_yields_clip_normalised_tensors(source, transform, file_sources):
    dataset = open_dataset(file_sources.get(source, source), transform)
    raw = open_dataset(file_sources.get(source, source), None)
    assert len(dataset) == len(raw) > 0
    for k in range(len(dataset)):
        tensor, label = dataset[k]
        assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32
        assert isinstance(label, int) and 0 <= label < len(dataset.classnames)
        pixels = tensor * CLIP_STD + CLIP_MEAN  # undo Normalize: back to [0, 1]
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
        # Resizing keeps each channel's mean; compare with the source image's mean.
        source_mean = np.asarray(raw[k][0], dtype=np.float64).mean(axis=(0, 1)) / 255
        assert pixels.mean(dim=(1, 2)).numpy() == pytest.approx(source_mean, abs=0.03)
    assert dataset.labels.tolist() == [raw[k][1] for k in range(len(raw))]


def test_loader_batches_are_stacked_tensors(transform):
    dataset = open_dataset("builtin:shapes?split=train&classes=id&per_class=3", transform)
    loader = build_loader(dataset, 8, shuffle=True, seed=0)
    batches = list(loader)
    assert [len(labels) for _, labels in batches] == [8, 8, 8, 8, 4]
    images, labels = batches[0]
    assert images.shape == (8, 3, 32, 32) and labels.dtype == torch.int64
    seen = torch.cat([labels for _, labels in batches]).tolist()
    assert sorted(seen) == sorted(dataset.labels.tolist())


def shard_indices(n: int, world_size: int, *, seed: int, epoch: int = 0, drop_last=False):
    dataset = torch.utils.data.TensorDataset(torch.arange(n))
    shards = []
    for rank in range(world_size):
        loader = build_loader(
            dataset, 4, shuffle=True, seed=seed, rank=rank, world_size=world_size,
            drop_last=drop_last,
        )  # fmt: skip
        loader.sampler.set_epoch(epoch)
        shards.append([int(i) for (batch,) in loader for i in batch])
    return shards


def test_two_workers_split_the_epoch_disjointly_and_completely():
    first, second = shard_indices(40, 2, seed=3)
    assert len(first) == len(second) == 20
    assert not set(first) & set(second)
    assert sorted(first + second) == list(range(40))
    # Another epoch reshuffles, with the same guarantees; the same seed and epoch repeat exactly.
    again_first, again_second = shard_indices(40, 2, seed=3, epoch=1)
    assert again_first != first and sorted(again_first + again_second) == list(range(40))
    assert shard_indices(40, 2, seed=3) == [first, second]
    assert shard_indices(40, 2, seed=4) != [first, second]


def test_uneven_epochs_pad_or_drop():
    padded = shard_indices(41, 2, seed=0)
    assert set(padded[0]) | set(padded[1]) == set(range(41))
    assert len(padded[0]) == len(padded[1]) == 21  # one sample repeated to even the shards
    dropped = shard_indices(41, 2, seed=0, drop_last=True)
    assert len(dropped[0]) == len(dropped[1]) == 20 and not set(dropped[0]) & set(dropped[1])


def test_global_batch_is_the_same_for_any_worker_count():
    """Per-worker batches of 2 workers together hold as many distinct samples as 1 worker's."""
    dataset = torch.utils.data.TensorDataset(torch.arange(64))
    for world_size in (1, 2, 4):
        batch = per_worker_batch(16, world_size)
        first_batches = [
            next(iter(build_loader(dataset, batch, shuffle=True, seed=0, rank=r,
                                   world_size=world_size)))[0]
            for r in range(world_size)
        ]  # fmt: skip
        global_batch = torch.cat(first_batches)
        assert len(global_batch) == 16 and len(set(global_batch.tolist())) == 16


def test_dataloader_workers_give_the_same_batches(transform):
    dataset = open_dataset("builtin:digits?split=val&per_class=2", transform)
    serial = list(build_loader(dataset, 5, shuffle=True, seed=1))
    parallel = list(build_loader(dataset, 5, shuffle=True, seed=1, num_workers=2))
    assert len(serial) == len(parallel) == 4
    for (images_a, labels_a), (images_b, labels_b) in zip(serial, parallel):
        assert torch.equal(images_a, images_b) and torch.equal(labels_a, labels_b)


class _LoaderMemory(torch.utils.data.Dataset):
    """One sample: the resident memory (MiB) and the parent of the process that loads it."""

    def __len__(self):
        return 1

    def __getitem__(self, index):
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        return int(status["VmRSS"].split()[0]) // 1024, os.getppid()


def _rss_mib() -> int:
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(status["VmRSS"].split()[0]) // 1024


def test_a_loader_process_does_not_hold_its_parents_memory():
    """Loader processes start from a fork server: a process forked from this one would map the
    512 MiB block (and keep it as its own copy once this process rewrites it)."""
    block = torch.ones(2**27)  # 512 MiB, written
    parent = _rss_mib()
    loader = build_loader(_LoaderMemory(), 1, shuffle=False, seed=0, num_workers=1)
    [(rss, ppid)] = [(int(r), int(p)) for r, p in loader]
    # forked, it would map the block and most of this process's heap (here 998 of 1,336 MiB); from
    # the fork server, imports only (490)
    assert parent - rss > 600, (rss, parent)
    assert ppid != os.getpid()  # the fork server's child, not this process's
    del block


def test_batch_and_rank_errors():
    assert per_worker_batch(512, 8) == 64
    with pytest.raises(
        ConfigError,
        match=f"^{re.escape('global batch size 10 is not divisible by 4 workers; use a positive multiple of 4')}$",
    ):
        per_worker_batch(10, 4)
    with pytest.raises(ConfigError, match=r"^world size must be at least 1, got 0$"):
        per_worker_batch(8, 0)
    with pytest.raises(ConfigError, match=r"^rank 2 is outside 0\.\.1 \(world size 2\)$"):
        build_loader(torch.utils.data.TensorDataset(torch.arange(4)), 2, shuffle=False, seed=0,
                     rank=2, world_size=2)  # fmt: skip
