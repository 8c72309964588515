"""``imagefolder:PATH``: torchvision's ImageFolder layout, ``PATH/<class folder>/**/<image>``.

Class folders are sorted by name (label = position). Class names come from, in order:
``classnames_file`` (one per line, in label order), open_clip's ImageNet names when the folders are
the 1,000 ImageNet wnids (``n01440764`` ...; ``raymmft.text.imagenet_classnames``, which tells
open_clip's two repeated names apart), else the folder names themselves.

Opening lists the files (``list_image_folder``, the one walk) unless it is given an
``ImageFolderListing`` made earlier (``raymmft.data.listing`` stores one, so that a search walks
each folder once); an unreadable image fails where it is decoded, named (or, with
``skip_corrupt``, is left out of evaluation and counted). The driver's preflight opens with
``check=True``: every selected image's header is read then (with ``skip_corrupt`` the whole image)
by a bounded number of threads, so an unreadable file fails before any trial starts, in memory that
does not grow with the number of files.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raymmft.data.dataset import FileImageDataset, PackedNames, image_problem
from raymmft.data.selection import select_samples
from raymmft.data.spec import DatasetSpec
from raymmft.errors import DataError
from raymmft.progress import Progress, say
from raymmft.text import imagenet_classnames

# torchvision.datasets.folder.IMG_EXTENSIONS
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
WNID = re.compile(r"n\d{8}")
IMAGENET_CLASS_COUNT = 1000
# Reading a header is file I/O (often NFS): threads wait on it, so twice the cores keep them busy.
THREADS_PER_CORE = 2
MAX_CHECK_THREADS = 32
CHECK_CHUNK = 64  # images per unit of work
CHUNKS_PER_THREAD = 4  # units of work queued per thread: the memory the check holds


@dataclass(frozen=True)
class ImageFolderListing:
    """Every image file of a folder tree: ``files[i]`` (relative to ``root``, ``/``-separated)
    lies in the class folder ``folders[labels[i]]``. The walk's result, which
    ``raymmft.data.listing`` stores so that opening the folder again does not walk it. The names
    are packed (``PackedNames``): no Python string per file."""

    root: str
    folders: tuple[str, ...]
    files: PackedNames
    labels: np.ndarray

    def path(self, index: int) -> str:
        return f"{self.root}/{self.files[index]}"

    def paths(self, indices: Sequence[int] | np.ndarray | None = None) -> PackedNames:
        """The absolute paths of ``indices`` (all files when ``None``), as the walk forms them."""
        chosen = self.files if indices is None else self.files.take(indices)
        return chosen.with_prefix(f"{self.root}/")


@dataclass(frozen=True)
class ImageFolderScan:
    """Every image file of a folder tree, with labels (index into ``classnames``)."""

    root: Path
    folders: list[str]
    classnames: list[str]
    paths: list[Path]
    labels: np.ndarray


def read_classnames_file(path: str | Path) -> list[str]:
    """Class names, one per non-blank line, surrounding whitespace stripped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"classnames file does not exist: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"classnames file {path}: not UTF-8 text (offset {exc.start})") from None
    names, first = [], {}
    for number, line in enumerate(lines, 1):
        name = line.strip()
        if not name:
            continue
        if name in first:
            raise DataError(
                f"classnames file {path}: {name!r} is listed twice (lines {first[name]} and {number})"
            )
        first[name] = number
        names.append(name)
    return names


def folder_classnames(
    root: str | Path, folders: Sequence[str], classnames_file: str | None
) -> list[str]:
    """Class names for the class folders (see the module docstring for the order of sources)."""
    if classnames_file is not None:
        names = read_classnames_file(classnames_file)
        if len(names) != len(folders):
            raise DataError(
                f"classnames file {classnames_file} has {len(names)} names but {root} has "
                f"{len(folders)} class folders"
            )
        return names
    if len(folders) == IMAGENET_CLASS_COUNT and all(WNID.fullmatch(f) for f in folders):
        return imagenet_classnames()  # open_clip's order is the sorted-wnid order
    return list(folders)


def folder_root(location: str) -> Path:
    """The root folder an ``imagefolder:`` location names, as the walk and listings spell it."""
    return Path(location).expanduser()


def class_folders(root: str | Path) -> list[str]:
    """The class folders of an ImageFolder root, sorted: one listing of the root, no walk."""
    root = folder_root(str(root))
    if not root.exists():
        raise DataError(f"dataset path does not exist: {root}")
    if not root.is_dir():
        raise DataError(f"dataset path is not a folder: {root}")
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not folders:
        raise DataError(f"no class folders in {root}")
    return folders


def _folder_id(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_dev, info.st_ino


def image_files(folder: Path, seen: dict[tuple[int, int], Path]) -> list[str]:
    """The paths of the image files under ``folder`` in ``os.walk`` order (top-down, names
    sorted), links followed. Each real folder is read once: ``seen`` maps the ``(st_dev, st_ino)``
    of every folder read so far to its path, and a folder met again (a link to an ancestor, to
    another class folder, or two links to one folder) is a ``DataError``, not a loop or images
    counted twice. Files are plain strings: a ``Path`` per file would intern every file name for
    the life of the process (about 220 B a file, at ImageNet's 1.28 M files 280 MB)."""
    files: list[str] = []
    stack = [folder]
    while stack:
        path = stack.pop()
        key = _folder_id(path)
        if key in seen and seen[key] != path:
            raise DataError(
                f"folder {path} is the folder {seen[key]} again (through a link): its images "
                "would be read twice, or forever; remove the link"
            )
        seen[key] = path
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:  # as os.walk: a folder that cannot be listed is left out
            continue
        files += [
            e.path
            for e in entries
            if e.name.lower().endswith(IMAGE_EXTENSIONS)
            and not e.name.startswith(".")
            and not _is_dir(e)
        ]
        stack += [Path(e.path) for e in reversed(entries) if _is_dir(e)]
    return files


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows a link, as os.walk(followlinks=True)
    except OSError:
        return False


def list_image_folder(
    root: str | Path, *, out: Callable[[str], None] | None = say
) -> ImageFolderListing:
    """Walk the class folders and list their image files (by extension); nothing is decoded.
    A walk of a large folder says how far it got about every ten seconds (``out``)."""
    root = folder_root(str(root))
    folders = class_folders(root)
    files: list[str] = []
    counts = np.zeros(len(folders), dtype=np.int64)
    seen = {_folder_id(root): root}
    cut = len(str(root)) + 1
    progress = Progress(f"listing {root}", len(folders), "class folders", out=out)
    for label, folder in enumerate(folders):
        found = image_files(root / folder, seen)
        if not found:
            raise DataError(f"empty class folder: {root / folder}")
        files += [p[cut:] for p in found]
        counts[label] = len(found)
        progress.update(1)
    progress.finish()
    labels = np.repeat(np.arange(len(folders), dtype=np.int32), counts)
    return ImageFolderListing(str(root), tuple(folders), PackedNames.of(files), labels)


def scan_image_folder(root: str | Path, *, classnames_file: str | None = None) -> ImageFolderScan:
    """List the class folders and their image files (by extension); nothing is decoded."""
    listing = list_image_folder(root)
    root = Path(listing.root)
    return ImageFolderScan(
        root,
        list(listing.folders),
        folder_classnames(root, listing.folders, classnames_file),
        [Path(p) for p in listing.paths()],
        listing.labels.astype(np.int64),
    )


def check_threads() -> int:
    """Threads that read image headers: ``THREADS_PER_CORE`` per core this process may use, at
    most ``MAX_CHECK_THREADS``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(THREADS_PER_CORE * (cores or 1), MAX_CHECK_THREADS))


def unreadable_images(
    paths: Sequence[str | Path],
    *,
    full_decode: bool,
    threads: int | None = None,
    progress: Progress | None = None,
) -> list[tuple[int, str]]:
    """``(index, reason)`` of each unreadable image of ``paths``, in order.

    Threads read the images (the work is file I/O) in chunks of ``CHECK_CHUNK``; at most
    ``CHUNKS_PER_THREAD`` chunks per thread are queued at a time, so what the check holds is
    bounded by the threads, not by ``len(paths)`` (one future per file took ~2 KB a file)."""
    threads = threads or check_threads()

    def check(start: int) -> list[tuple[int, str]]:
        found = []
        for k in range(start, min(start + CHECK_CHUNK, len(paths))):
            why = image_problem(paths[k], full_decode=full_decode)
            if why is not None:
                found.append((k, why))
        return found

    found: list[tuple[int, str]] = []
    starts = range(0, len(paths), CHECK_CHUNK)
    if len(paths) <= CHECK_CHUNK or threads == 1:
        for start in starts:
            found += check(start)
            if progress is not None:
                progress.update(min(CHECK_CHUNK, len(paths) - start))
        return found
    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()

        def collect() -> None:
            start, future = pending.popleft()
            found.extend(future.result())
            if progress is not None:
                progress.update(min(CHECK_CHUNK, len(paths) - start))

        for start in starts:
            if len(pending) >= threads * CHUNKS_PER_THREAD:
                collect()
            pending.append((start, pool.submit(check, start)))
        while pending:
            collect()
    return found


def find_unreadable(
    paths: Sequence[str | Path], *, full_decode: bool, progress: Progress | None = None
) -> list[tuple[str | Path, str]]:
    """``(path, reason)`` of each unreadable image, in order (``unreadable_images``)."""
    return [
        (paths[k], why)
        for k, why in unreadable_images(paths, full_decode=full_decode, progress=progress)
    ]


def open_image_folder(
    spec: DatasetSpec,
    transform: Callable | None,
    *,
    id_classnames: Sequence[str] | None = None,
    check: bool = False,
    listing: ImageFolderListing | None = None,
) -> FileImageDataset:
    """The images of ``spec`` (an ``imagefolder:`` spec), selected. The files are those of
    ``listing`` (made by ``list_image_folder`` of this root, earlier), else listed now, as
    torchvision's ImageFolder does; an unreadable image is found where it is decoded (a file
    listed but gone since fails there, named). With ``check`` (the driver's preflight, once per
    search) every selected image's header is read now, or with ``skip_corrupt`` the whole image,
    and unreadable ones fail here or are left out (``dataset.skipped``)."""
    root = str(folder_root(spec.location))
    if listing is None:
        listing = list_image_folder(root)
    elif listing.root != root:
        raise DataError(f"{spec}: the listing given is of {listing.root}, not of {root}")
    classnames = folder_classnames(root, listing.folders, spec.classnames_file)
    indices, labels, classnames = select_samples(
        spec, listing.labels, classnames, id_classnames=id_classnames, aliases=listing.folders
    )
    paths = listing.paths(indices)
    del indices
    if not check:
        return FileImageDataset(
            paths, labels, classnames, transform, skip_corrupt=spec.skip_corrupt
        )
    progress = Progress(f"checking images of {spec}", len(paths), "images", out=say)
    unreadable = unreadable_images(paths, full_decode=spec.skip_corrupt, progress=progress)
    progress.finish()
    if unreadable and not spec.skip_corrupt:
        k, why = unreadable[0]
        raise DataError(f"cannot read image {paths[k]}: {why}")
    if not unreadable:
        return FileImageDataset(paths, labels, classnames, transform)
    keep = np.ones(len(paths), dtype=bool)
    keep[[k for k, _ in unreadable]] = False
    if not keep.any():
        raise DataError(f"{spec}: every selected image is unreadable")
    return FileImageDataset(
        [p for p, kept in zip(paths, keep) if kept],
        labels[keep],
        classnames,
        transform,
        skipped=[paths[k] for k, _ in unreadable],
    )
