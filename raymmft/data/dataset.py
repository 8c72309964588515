"""The one dataset type every source produces: PIL RGB images through a transform, with int labels.

Three storage forms, one interface: decoded pixels in memory (builtins), image files (ImageFolder),
Parquet row groups read on access (``raymmft.data.parquet.ParquetImageDataset``). ``labels[i]``
indexes ``classnames``; ``sample_ids[i]`` names sample ``i`` in its source (file path, Parquet row,
generated image), for messages and for checking that splits are disjoint.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from raymmft.errors import DataError

Transform = Callable[[Image.Image], torch.Tensor] | None


def unreadable_reason(exc: Exception) -> str:
    """A short reason for an image PIL could not read (PIL's own message repeats the file name)."""
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image format"
    return str(exc) or type(exc).__name__


def image_problem(data: bytes | str | Path | None, *, full_decode: bool) -> str | None:
    """Why an image (encoded bytes or a file) cannot be read, ``None`` if it can: its header only
    (cheap, catches non-images and empty files) or, with ``full_decode``, all of it."""
    if data is None:
        return "no image bytes (null)"
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            if full_decode:
                image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return unreadable_reason(exc)
    return None


def decode_image(data: bytes | str | Path | None, where: str | Callable[[], str]) -> Image.Image:
    """Decode encoded bytes or a file path to an RGB image, or raise DataError naming ``where``
    (a callable is called only then: a name that costs a read)."""
    try:
        if data is None:
            why = "no image bytes (null)"
        else:
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
                return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        why = unreadable_reason(exc)
    raise DataError(f"cannot read image {where() if callable(where) else where}: {why}")


class IdsByIndex(Sequence):
    """Sample ids formed when asked for, ``name(index)``: no string per sample in memory."""

    def __init__(self, length: int, name: Callable[[int], str]):
        self.length, self.name = length, name

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self.name(k) for k in range(*index.indices(self.length))]
        index = int(index) + (self.length if index < 0 else 0)
        if not 0 <= index < self.length:
            raise IndexError(index)
        return self.name(index)


def release_arrow_memory() -> None:
    """Give Arrow's freed pages back to the system. Its allocator keeps the pages of decoded
    columns and casts after they are dropped (about 300 B a row of a listing), so a process that
    has read a listing or a Parquet index would hold them for its life, not just what it keeps."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


TAKE_CHUNK = 4096  # strings per step of PackedNames.take: ~160 KB of names, 4 MB of indices


class PackedNames(Sequence):
    """Strings packed in one byte array with an array of offsets, each read back as ``prefix``
    plus its bytes (file system encoding): about a byte a character and 8 B a string, with no
    Python object per string. An ImageFolder of 1.28 M files keeps its paths in two arrays (a
    list of str: about 110 B a path), and they reach a loader process pickled as two arrays (its
    private memory grows about 27 B a file in the ImageNet-shape benchmark)."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray, prefix: str = ""):
        self.data, self.offsets, self.prefix = data, offsets, prefix

    @classmethod
    def of(cls, names: Iterable[str], prefix: str = "") -> PackedNames:
        encoded = [os.fsencode(n) for n in names]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        return cls(data, offsets, prefix)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[k] for k in range(*index.indices(len(self)))]
        index = int(index) + (len(self) if index < 0 else 0)
        if not 0 <= index < len(self):
            raise IndexError(index)
        start, end = self.offsets[index], self.offsets[index + 1]
        return self.prefix + os.fsdecode(self.data[start:end].tobytes())

    def take(self, indices) -> PackedNames:
        """The strings at ``indices``, packed anew (the same prefix). The bytes are gathered
        ``TAKE_CHUNK`` strings at a time, through an index per byte of the chunk only."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        starts = self.offsets[indices]
        lengths = self.offsets[indices + 1] - starts
        offsets = np.zeros(len(indices) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        data = np.empty(int(offsets[-1]), dtype=np.uint8)
        for first in range(0, len(indices), TAKE_CHUNK):
            chunk = slice(first, first + TAKE_CHUNK)
            size = lengths[chunk]
            # each byte: its string's start in self.data plus its place within the string
            place = offsets[:-1][chunk] - offsets[first]
            within = np.arange(int(size.sum())) - np.repeat(place, size)
            data[offsets[first] : offsets[first] + len(within)] = self.data[
                np.repeat(starts[chunk], size) + within
            ]
        return PackedNames(data, offsets, self.prefix)

    def with_prefix(self, prefix: str) -> PackedNames:
        return PackedNames(self.data, self.offsets, prefix)

    def __eq__(self, other) -> bool:  # the same strings, however packed (or a list of them)
        if not isinstance(other, (PackedNames, list, tuple)):
            return NotImplemented
        return len(self) == len(other) and list(self) == list(other)

    __hash__ = None


# the label of an image that could not be decoded (``skip_corrupt``): consumers drop or replace it
UNREADABLE = -1


class LabeledImageDataset(torch.utils.data.Dataset):
    """``dataset[i] -> (transform(image), label)``; ``transform=None`` returns the PIL image.

    An image that cannot be decoded raises ``DataError`` naming it, or, with ``skip_corrupt``,
    comes back as a black image labelled ``UNREADABLE`` (-1): evaluation leaves it out and counts
    it, training replaces it (``fill_unreadable``).
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        classnames: Sequence[str],
        sample_ids: Sequence[str],
        transform: Transform = None,
        *,
        skipped: Sequence[str] = (),
        skip_corrupt: bool = False,
    ):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classnames = list(classnames)
        lazy = isinstance(sample_ids, (IdsByIndex, PackedNames))
        self.sample_ids = sample_ids if lazy else list(sample_ids)
        self.transform = transform
        self.skipped = list(skipped)  # left out when opened with a check (skip_corrupt)
        self.skip_corrupt = skip_corrupt

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.labels)

    def load_image(self, index: int) -> Image.Image:
        raise NotImplementedError

    def __getitem__(self, index: int):
        try:
            image, label = self.load_image(index), int(self.labels[index])
        except DataError:
            if not self.skip_corrupt:
                raise
            image, label = Image.new("RGB", (32, 32)), UNREADABLE
        return (image if self.transform is None else self.transform(image)), label


class ArrayImageDataset(LabeledImageDataset):
    """Images held as one ``[N, H, W, 3]`` uint8 array (generated or small built-in sets)."""

    def __init__(self, pixels: np.ndarray, labels, classnames, sample_ids, transform=None):
        super().__init__(labels, classnames, sample_ids, transform)
        self.pixels = pixels

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(np.ascontiguousarray(self.pixels[index]))


class FileImageDataset(LabeledImageDataset):
    """Images read from files on each access (ImageFolder)."""

    def __init__(
        self, paths, labels, classnames, transform=None, *, skipped=(), skip_corrupt=False
    ):
        ids = paths if isinstance(paths, PackedNames) else [str(p) for p in paths]
        super().__init__(
            labels, classnames, ids, transform, skipped=skipped, skip_corrupt=skip_corrupt
        )

    def load_image(self, index: int) -> Image.Image:
        return decode_image(self.sample_ids[index], self.sample_ids[index])


def fill_unreadable(
    images: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A training batch with its ``UNREADABLE`` samples replaced by readable ones of the same
    batch (in turn), so every worker keeps its share of the global batch; the count replaced. A
    batch with nothing readable is a ``DataError``."""
    bad = labels == UNREADABLE
    count = int(bad.sum())
    if not count:
        return images, labels, 0
    good = torch.nonzero(~bad).flatten()
    if len(good) == 0:
        raise DataError(f"every image of a training batch ({len(labels)}) is unreadable")
    source = good[torch.arange(count) % len(good)]
    images, labels = images.clone(), labels.clone()
    images[bad], labels[bad] = images[source], labels[source]
    return images, labels, count
