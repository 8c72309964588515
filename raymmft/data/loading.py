"""From a spec to batches: ``open_dataset`` (any kind) and ``build_loader`` (one worker's shard).

The Ray layer passes each Train worker's ``rank``/``world_size`` to ``build_loader``; nothing here
imports Ray. Every loader samples through a distributed sampler (also for one worker), so the epoch
order is a function of ``(seed, epoch)`` only and ``loader.sampler.set_epoch(epoch)`` reshuffles the
same way whatever the worker count: a ``RowGroupSampler`` for datasets read by row group (Parquet),
torch's ``DistributedSampler`` for the others (random access costs them nothing).
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from raymmft.data import digits, shapes
from raymmft.data.dataset import ArrayImageDataset, LabeledImageDataset
from raymmft.data.selection import select_classes, select_samples
from raymmft.data.spec import DatasetSpec
from raymmft.errors import ConfigError, DataError, short_list

if TYPE_CHECKING:
    from raymmft.data.listing import Listings


def open_shapes(spec: DatasetSpec, transform, *, id_classnames=None) -> ArrayImageDataset:
    """Generated images of the shapes world; labels index the selected classes."""
    classnames = list(spec.builtin_classes(id_classnames))
    if not classnames:
        raise DataError(f"{spec}: the selection holds no classes (every concept is an ID class)")
    pixels, labels, ids = shapes.generate(
        classnames,
        spec.split,
        seed=spec.seed,
        per_class=spec.per_class,
        num_samples=spec.num_samples,
        size=spec.image_size or shapes.NATIVE_SIZE,
    )
    return ArrayImageDataset(pixels, labels, classnames, ids, transform)


def open_digits(spec: DatasetSpec, transform, *, id_classnames=None) -> ArrayImageDataset:
    """scikit-learn digits of the selected classes and split."""
    _, targets = digits.raw_digits()
    indices, labels, classnames = select_samples(
        spec, targets, digits.CLASSNAMES, id_classnames=id_classnames
    )
    pixels = digits.digit_images(spec.image_size or digits.NATIVE_SIZE)[indices]
    return ArrayImageDataset(
        pixels, labels, classnames, [f"digits/{i}" for i in indices], transform
    )


def open_dataset(
    spec: DatasetSpec | str | Mapping,
    transform: Callable | None,
    *,
    id_classnames: Sequence[str] | None = None,
    check: bool = False,
    check_all: bool = False,
    listings: Listings | None = None,
) -> LabeledImageDataset:
    """Open one dataset: ``dataset[i] == (transform(pil_rgb_image), label)``.

    ``id_classnames`` (the ID training set's class names) defines ``classes: near_ood``: the
    source's classes that are not ID classes. Labels always index ``dataset.classnames``; for OoD
    sets they are the set's own class indices, which OoD scoring ignores. ``check`` (the driver's
    preflight) reads file-backed images now: every ImageFolder file's header, a sample of Parquet
    row groups (every one with ``check_all`` or ``skip_corrupt``); otherwise images are read when
    used. An ImageFolder whose root has a listing in ``listings`` (``raymmft.data.listing``) is
    opened from it, without walking the folder.
    """
    if not isinstance(spec, DatasetSpec):
        spec = DatasetSpec.model_validate(spec)
    if spec.kind == "shapes":
        return open_shapes(spec, transform, id_classnames=id_classnames)
    if spec.kind == "digits":
        return open_digits(spec, transform, id_classnames=id_classnames)
    if spec.kind == "imagefolder":
        from raymmft.data.imagefolder import open_image_folder
        from raymmft.data.listing import listing_of

        return open_image_folder(
            spec,
            transform,
            id_classnames=id_classnames,
            check=check,
            listing=listing_of(spec, listings),
        )
    from raymmft.data.parquet import open_parquet

    return open_parquet(
        spec, transform, id_classnames=id_classnames, check=check, check_all=check_all
    )


def classnames_of(
    spec: DatasetSpec | str | Mapping,
    *,
    id_classnames: Sequence[str] | None = None,
    listings: Listings | None = None,
) -> list[str]:
    """``open_dataset(spec, None, id_classnames=...).classnames`` without listing or reading any
    image: builtins name their classes, an ImageFolder's come from its class folders (one listing
    of the root, or its listing in ``listings``) and ``classnames_file``, a Parquet set's from its
    schema. What only opening finds (an empty class folder, a selection without samples, an
    unreadable image) is the preflight's to find."""
    if not isinstance(spec, DatasetSpec):
        spec = DatasetSpec.model_validate(spec)
    if spec.kind in ("shapes", "digits"):
        classnames = list(spec.builtin_classes(id_classnames))
        if not classnames:  # as the openers say it
            what = "classes (every concept is an ID class)" if spec.kind == "shapes" else "samples"
            raise DataError(f"{spec}: the selection holds no {what}")
        return classnames
    aliases = None
    if spec.kind == "imagefolder":
        from raymmft.data.imagefolder import class_folders, folder_classnames
        from raymmft.data.listing import listing_folders, listing_key

        aliases = listing_folders(spec, listings) or class_folders(listing_key(spec))
        source = folder_classnames(listing_key(spec), aliases, spec.classnames_file)
    else:
        from raymmft.data.parquet import read_parquet_classnames

        source = read_parquet_classnames(spec.location, classnames_file=spec.classnames_file)
    ids = select_classes(spec, source, id_classnames=id_classnames, aliases=aliases)
    return [source[k] for k in ids]


def require_id_classes(dataset: LabeledImageDataset, where: str) -> None:
    """An ID set names at least two classes: with one, every image is classified correctly and
    the contrastive loss has no other prompt to contrast with."""
    n = len(dataset.classnames)
    if n < 2:
        raise DataError(
            f"{where} has {n} class{'' if n == 1 else 'es'} ({', '.join(dataset.classnames)}); "
            "an ID set needs at least 2 (classification and the contrastive loss compare classes)"
        )


def require_same_classes(dataset: LabeledImageDataset, classnames, where: str, of: str) -> None:
    """An ID set evaluated against the ID classes has those classes, in their order: its labels
    index the class prompts."""
    if list(dataset.classnames) != list(classnames):
        raise DataError(
            f"{where} has the classes {short_list(dataset.classnames)} but {of} has "
            f"{short_list(classnames)}: the ID validation set needs the same classes in the same "
            "order (give both the same classnames_file)"
        )


def per_worker_batch(global_batch: int, world_size: int) -> int:
    """The batch each of ``world_size`` workers loads so that together they form ``global_batch``
    (the loss gathers features across workers, so the global batch is what the method sees)."""
    if world_size < 1:
        raise ConfigError(f"world size must be at least 1, got {world_size}")
    if global_batch < 1 or global_batch % world_size:
        raise ConfigError(
            f"global batch size {global_batch} is not divisible by {world_size} workers; "
            f"use a positive multiple of {world_size}"
        )
    return global_batch // world_size


MAX_AUTO_LOADER_WORKERS = 8

#: What the loaders' fork server imports once, so that its loader processes start without
#: importing: the parent's main module (a Ray worker's script, the CLI's; a loader process would
#: otherwise run it again) and what unpickling a dataset and its transforms needs.
LOADER_SERVER_PRELOAD = [
    "__main__",
    "raymmft.data.loading",
    "raymmft.data.imagefolder",
    "raymmft.data.parquet",
    "open_clip",
]


def loader_context() -> multiprocessing.context.BaseContext:
    """How loader processes start: forked from a fork server, a process that holds only imports.

    A loader process forked from its parent (torch's default) keeps, as its own copy, every page
    the parent rewrites after the fork: the model's activations, and in training its weights,
    gradients and optimizer state (0.3-2.1 GB a loader process in the ImageNet-shape benchmark,
    depending on when it was forked). From the fork server it holds its dataset and what it
    decodes. The dataset travels pickled, so a script that starts loaders guards its entry point
    with ``if __name__ == "__main__":`` (as multiprocessing asks on macOS and Windows)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(LOADER_SERVER_PRELOAD)
    return context


def start_loader_server() -> None:
    """Start the fork server now, so that its imports overlap the model's build (the first loader
    would start it otherwise, and wait for it)."""
    from multiprocessing import forkserver

    loader_context()
    forkserver.ensure_running()


def loader_workers(num_workers: int | None, cpus: float | None = None) -> int:
    """DataLoader worker processes: ``num_workers`` when set; when ``None``, one fewer than the CPUs
    this process may use (its CPU affinity, and at most ``cpus``, the CPUs Ray reserved for this
    worker), at most ``MAX_AUTO_LOADER_WORKERS``; 0 (load in this process) on one CPU."""
    if num_workers is not None:
        return num_workers
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cpus is not None:
        available = min(available, max(1, math.floor(cpus)))
    return max(0, min(available - 1, MAX_AUTO_LOADER_WORKERS))


class RowGroupSampler(Sampler[int]):
    """Worker ``rank``'s share of an epoch of a dataset read by row group, in an order that reads
    each row group about once.

    Epoch ``e`` with ``shuffle``: the row groups in a permutation drawn from ``(seed, e)``, the
    samples of each group in a permutation of their own, one after the other; without
    ``shuffle``, dataset order. Rank ``r`` takes the ``r``-th of ``world_size`` contiguous equal
    slices of that order (whole groups but at its two ends), so the ranks are disjoint and each
    reads about ``1 / world_size`` of the groups. Uneven lengths are padded with the order's first
    samples or, with ``drop_last``, cut, as in torch's ``DistributedSampler``. The order depends
    on ``(seed, epoch)``, the dataset and ``world_size`` only (not on DataLoader workers).

    A DataLoader worker loads whole batches, in turn with the others: a group of ``G`` rows is
    read by up to ``min(num_workers, G / batch_size + 1)`` of them, so small row groups (the
    converter writes 100 rows) keep reads near one per group.
    """

    def __init__(
        self,
        groups: np.ndarray,
        *,
        num_replicas: int,
        rank: int,
        shuffle: bool,
        seed: int,
        drop_last: bool = False,
    ):
        self.groups = np.asarray(groups, dtype=np.int32)
        self.num_replicas, self.rank, self.shuffle, self.seed = num_replicas, rank, shuffle, seed
        self.drop_last, self.epoch = drop_last, 0
        n = len(self.groups)
        self.num_samples = n // num_replicas if drop_last else math.ceil(n / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_order(self) -> np.ndarray:
        """Every rank's samples, rank after rank (``total_size`` indices)."""
        n = len(self.groups)
        if self.shuffle:
            rng = np.random.default_rng([self.seed % 2**63, self.epoch])
            present, position = np.unique(self.groups, return_inverse=True)
            group_place = rng.permutation(len(present))[position]
            order = np.lexsort((rng.random(n), group_place))
        else:
            order = np.arange(n)
        if self.total_size > n:  # pad from the start, as often as needed
            order = np.resize(order, self.total_size)
        return order[: self.total_size]

    def __iter__(self) -> Iterator[int]:
        start = self.rank * self.num_samples
        return iter(self.epoch_order()[start : start + self.num_samples].tolist())

    def __len__(self) -> int:
        return self.num_samples


def build_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    num_workers: int | None = 0,
    cpus: float | None = None,
    device: torch.device | str | None = None,
    persistent_workers: bool | None = None,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader over worker ``rank``'s shard of ``dataset``, ``batch_size`` per worker.

    Shards are disjoint and cover the epoch; when ``len(dataset)`` is not a multiple of
    ``world_size``, the sampler repeats a few samples to even them out (``drop_last=True`` drops the
    tail instead). Call ``loader.sampler.set_epoch(epoch)`` before each epoch to reshuffle. A
    dataset with ``row_groups()`` (Parquet) is ordered by ``RowGroupSampler``, others by torch's
    ``DistributedSampler``.

    ``num_workers=None`` loads in as many processes as ``cpus`` allow (``loader_workers``); batches
    go to pinned memory when ``device`` is CUDA (so copies with ``non_blocking`` overlap); the
    worker processes persist across epochs (``persistent_workers``, by default for a shuffled,
    i.e. training, loader).
    """
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside 0..{world_size - 1} (world size {world_size})")
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if hasattr(dataset, "row_groups"):
        sampler = RowGroupSampler(
            dataset.row_groups(),
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
    else:
        sampler = DistributedSampler(
            dataset,
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
    workers = loader_workers(num_workers, cpus)
    if persistent_workers is None:
        persistent_workers = shuffle
    # Seeds random augmentations in the DataLoader's worker processes, per rank.
    generator = torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        generator=generator,
        pin_memory=device is not None and torch.device(device).type == "cuda",
        persistent_workers=persistent_workers and workers > 0,
        multiprocessing_context=loader_context() if workers > 0 else None,
    )
