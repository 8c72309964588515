"""From a spec to batches: ``open_dataset`` (any kind) and ``build_loader`` (one worker's shard).

The Ray layer passes each Train worker's ``rank``/``world_size`` to ``build_loader``; nothing here
imports Ray. Every loader samples through a ``DistributedSampler`` (also for one worker), so the
epoch order is a function of ``(seed, epoch)`` only and ``loader.sampler.set_epoch(epoch)`` reshuffles
the same way whatever the worker count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from raymmft.data import digits, shapes
from raymmft.data.dataset import ArrayImageDataset, LabeledImageDataset
from raymmft.data.selection import select_samples
from raymmft.data.spec import DatasetSpec
from raymmft.errors import ConfigError, DataError, short_list


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
) -> LabeledImageDataset:
    """Open one dataset: ``dataset[i] == (transform(pil_rgb_image), label)``.

    ``id_classnames`` (the ID training set's class names) defines ``classes: near_ood``: the
    source's classes that are not ID classes. Labels always index ``dataset.classnames``; for OoD
    sets they are the set's own class indices, which OoD scoring ignores. ``check`` reads every
    file-backed image once now (the driver's preflight); otherwise images are read when used.
    """
    if not isinstance(spec, DatasetSpec):
        spec = DatasetSpec.model_validate(spec)
    if spec.kind == "shapes":
        return open_shapes(spec, transform, id_classnames=id_classnames)
    if spec.kind == "digits":
        return open_digits(spec, transform, id_classnames=id_classnames)
    if spec.kind == "imagefolder":
        from raymmft.data.imagefolder import open_image_folder

        return open_image_folder(spec, transform, id_classnames=id_classnames, check=check)
    from raymmft.data.parquet import open_parquet

    return open_parquet(spec, transform, id_classnames=id_classnames, check=check)


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


def build_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader over worker ``rank``'s shard of ``dataset``, ``batch_size`` per worker.

    Shards are disjoint and cover the epoch; when ``len(dataset)`` is not a multiple of
    ``world_size``, the sampler repeats a few samples to even them out (``drop_last=True`` drops the
    tail instead). Call ``loader.sampler.set_epoch(epoch)`` before each epoch to reshuffle.
    """
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside 0..{world_size - 1} (world size {world_size})")
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    sampler = DistributedSampler(
        dataset,
        num_replicas=world_size,
        rank=rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
    )
    # Seeds random augmentations in the DataLoader's worker processes, per rank.
    generator = torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=generator,
    )
