"""``imagefolder:PATH``: torchvision's ImageFolder layout, ``PATH/<class folder>/**/<image>``.

Class folders are sorted by name (label = position). Class names come from, in order:
``classnames_file`` (one per line, in label order), open_clip's ImageNet names when the folders are
the 1,000 ImageNet wnids (``n01440764`` ...; ``raymmft.text.imagenet_classnames``, which tells
open_clip's two repeated names apart), else the folder names themselves.

Opening lists the files; an unreadable image fails where it is decoded, named (or, with
``skip_corrupt``, is left out of evaluation and counted). The driver's preflight opens with
``check=True``: every selected image's header is read then (with ``skip_corrupt`` the whole image),
so an unreadable file fails in seconds, before any trial starts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raymmft.data.dataset import FileImageDataset, image_problem
from raymmft.data.selection import select_samples
from raymmft.data.spec import DatasetSpec
from raymmft.errors import DataError
from raymmft.text import imagenet_classnames

# torchvision.datasets.folder.IMG_EXTENSIONS
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
WNID = re.compile(r"n\d{8}")
IMAGENET_CLASS_COUNT = 1000
CHECK_THREADS = 8


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


def folder_classnames(root: Path, folders: list[str], classnames_file: str | None) -> list[str]:
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


def _folder_id(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_dev, info.st_ino


def image_files(folder: Path, seen: dict[tuple[int, int], Path]) -> list[Path]:
    """The image files under ``folder`` in ``os.walk`` order (top-down, names sorted), links
    followed. Each real folder is read once: ``seen`` maps the ``(st_dev, st_ino)`` of every folder
    read so far to its path, and a folder met again (a link to an ancestor, to another class
    folder, or two links to one folder) is a ``DataError``, not a loop or images counted twice."""
    files: list[Path] = []
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
            Path(e.path)
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


def scan_image_folder(root: str | Path, *, classnames_file: str | None = None) -> ImageFolderScan:
    """List the class folders and their image files (by extension); nothing is decoded."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"dataset path does not exist: {root}")
    if not root.is_dir():
        raise DataError(f"dataset path is not a folder: {root}")
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not folders:
        raise DataError(f"no class folders in {root}")
    paths: list[Path] = []
    labels: list[int] = []
    seen = {_folder_id(root): root}
    for label, folder in enumerate(folders):
        files = image_files(root / folder, seen)
        if not files:
            raise DataError(f"empty class folder: {root / folder}")
        paths += files
        labels += [label] * len(files)
    classnames = folder_classnames(root, folders, classnames_file)
    return ImageFolderScan(root, folders, classnames, paths, np.asarray(labels, dtype=np.int64))


def find_unreadable(paths: Sequence[Path], *, full_decode: bool) -> list[tuple[Path, str]]:
    """``(path, reason)`` of each unreadable image, in order (threads: the work is file I/O)."""

    def check(path: Path) -> str | None:
        return image_problem(path, full_decode=full_decode)

    if len(paths) <= 64:
        problems = [check(p) for p in paths]
    else:
        with ThreadPoolExecutor(CHECK_THREADS) as pool:
            problems = list(pool.map(check, paths, chunksize=64))
    return [(p, why) for p, why in zip(paths, problems) if why is not None]


def open_image_folder(
    spec: DatasetSpec,
    transform: Callable | None,
    *,
    id_classnames: Sequence[str] | None = None,
    check: bool = False,
) -> FileImageDataset:
    """The images of ``spec`` (an ``imagefolder:`` spec), selected. The files are listed, as
    torchvision's ImageFolder does; an unreadable image is found where it is decoded. With
    ``check`` (the driver's preflight, once per search) every selected image's header is read
    now, or with ``skip_corrupt`` the whole image, and unreadable ones fail here or are left out
    (``dataset.skipped``)."""
    scan = scan_image_folder(spec.location, classnames_file=spec.classnames_file)
    indices, labels, classnames = select_samples(
        spec, scan.labels, scan.classnames, id_classnames=id_classnames, aliases=scan.folders
    )
    paths = [scan.paths[i] for i in indices]
    if not check:
        return FileImageDataset(
            paths, labels, classnames, transform, skip_corrupt=spec.skip_corrupt
        )
    unreadable = find_unreadable(paths, full_decode=spec.skip_corrupt)
    if unreadable and not spec.skip_corrupt:
        path, why = unreadable[0]
        raise DataError(f"cannot read image {path}: {why}")
    bad = {p for p, _ in unreadable}
    keep = [k for k, p in enumerate(paths) if p not in bad]
    if not keep:
        raise DataError(f"{spec}: every selected image is unreadable")
    return FileImageDataset(
        [paths[k] for k in keep],
        labels[keep],
        classnames,
        transform,
        skipped=[str(p) for p, _ in unreadable],
    )
