"""Listings: an ImageFolder walked once per search, stored, and opened again without a walk.

A walk of ImageNet's training folder (1.28 M files) takes 30-60 s on NFS, and a search would walk
it in every trial worker at every start and restart. The driver walks each ImageFolder root of the
config once (``list_datasets``; the preflight's walk is that one), writes each listing to the
experiment's storage (``write_listings``: ``<experiment>/prepared/listings/``, a small Parquet
file per root) and hands the trials their locations; ``open_dataset(spec, ..., listings=...)``
and ``classnames_of`` then read the listing instead of the folder.

A listing is the folder as it was when the search started: a file added later is not trained on,
and a file removed later fails where it is read (``cannot read image PATH: [Errno 2] No such file
or directory ...``, as a file removed during a walk-based run does; with ``skip_corrupt`` it is
skipped and counted). A resumed search keeps its listings; list again by starting a new search.

File format: Parquet, columns ``path`` (string, relative to the root, ``/``-separated) and
``label`` (int32, the index of the class folder); the schema metadata ``raymmft.listing`` holds
JSON ``{"format": 1, "root": ..., "folders": [...]}``. About 10 bytes a file, zstd-compressed.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raymmft.data.dataset import PackedNames, release_arrow_memory
from raymmft.data.imagefolder import ImageFolderListing, folder_root, list_image_folder
from raymmft.data.spec import DataConfig, DatasetSpec
from raymmft.errors import DataError
from raymmft.storage import Location

LISTING_KEY = b"raymmft.listing"
LISTING_FORMAT = 1
LISTINGS_DIR = "listings"  # under the experiment's prepared/ folder

# what ``open_dataset`` and ``classnames_of`` take: an ImageFolder root -> its listing, in memory
# or as the location of a stored one
Listings = Mapping[str, "ImageFolderListing | Location | str"]


def data_specs(data: DataConfig) -> list[DatasetSpec]:
    """Every dataset of a config's ``data`` section: what a search lists."""
    return [data.id_train, data.id_val, *data.ood_val, *data.ood_test]


def listing_key(spec: DatasetSpec) -> str | None:
    """The root a spec's listing is kept under (``None``: not an ImageFolder, nothing to list)."""
    return str(folder_root(spec.location)) if spec.kind == "imagefolder" else None


def listing_name(root: str) -> str:
    """The file name of a root's listing: one per root, the same at every start of a search."""
    digest = hashlib.sha256(root.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"imagefolder-{digest}.parquet"


def list_datasets(specs: Iterable[DatasetSpec]) -> dict[str, ImageFolderListing]:
    """The listing of every ImageFolder root among ``specs``, each root walked once (a train and a
    validation split of one folder share it)."""
    listings: dict[str, ImageFolderListing] = {}
    for spec in specs:
        key = listing_key(spec)
        if key is not None and key not in listings:
            listings[key] = list_image_folder(key)
            path_column(listings[key])  # a name it cannot store fails here, before any worker
    return listings


def first_not_utf8(names: PackedNames) -> str:
    """The first name that is not UTF-8, its other bytes shown as ``\\xNN``."""
    for start, end in zip(names.offsets[:-1], names.offsets[1:]):
        raw = names.data[start:end].tobytes()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8", "backslashreplace")
    raise ValueError("every name is UTF-8")


def path_column(listing: ImageFolderListing) -> pa.LargeStringArray:
    """The listing's file names as an Arrow column of its packed bytes (no string per file). A
    listing is stored as UTF-8: a name that is not is a ``DataError`` naming it."""
    files = listing.files
    first, last = int(files.offsets[0]), int(files.offsets[-1])
    paths = pa.LargeStringArray.from_buffers(
        len(files),
        pa.py_buffer(np.ascontiguousarray(files.offsets - first, dtype=np.int64)),
        pa.py_buffer(np.ascontiguousarray(files.data[first:last])),
    )
    try:
        paths.validate(full=True)
    except pa.ArrowInvalid:
        raise DataError(
            f"{listing.root}: the file name {first_not_utf8(files)} is not UTF-8; rename it"
        ) from None
    return paths


def listing_bytes(listing: ImageFolderListing) -> bytes:
    meta = {"format": LISTING_FORMAT, "root": listing.root, "folders": list(listing.folders)}
    schema = pa.schema(
        [("path", pa.string()), ("label", pa.int32())],
        metadata={LISTING_KEY: json.dumps(meta).encode("utf-8", "surrogateescape")},
    )
    paths = path_column(listing)
    table = pa.table(
        {"path": paths.cast(pa.string()), "label": listing.labels},
        schema=schema,
    )
    sink = io.BytesIO()
    # every path is unique: a dictionary of them would only cost (about 400 B a file, at peak)
    pq.write_table(table, sink, compression="zstd", use_dictionary=["label"])
    del table, paths
    release_arrow_memory()  # the encoded pages
    return sink.getvalue()


def write_listing(listing: ImageFolderListing, location: str | Location) -> Location:
    """Store a listing (whole or not at all: ``Location.write_bytes``)."""
    return Location.parse(location).write_bytes(listing_bytes(listing))


def packed(column: pa.Array) -> PackedNames:
    """A string column as ``PackedNames`` without a Python string per row: its offsets and bytes
    (UTF-8, as the walk's names were written)."""
    if column.null_count:
        raise pa.ArrowInvalid("a path is null")
    column = column.cast(pa.large_string())  # 64-bit offsets
    _, offsets, data = column.buffers()
    start = column.offset
    offsets = np.frombuffer(offsets, dtype=np.int64)[start : start + len(column) + 1]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, np.uint8)
    return PackedNames(data, offsets)


def read_listing(location: str | Location) -> ImageFolderListing:
    """A stored listing; a file that is not one is a ``DataError`` naming it."""
    location = Location.parse(location)
    data = location.read_bytes()
    try:  # one file: ParquetFile, not read_table's dataset machinery (~40 MB more per process)
        table = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
    except pa.ArrowException as exc:
        raise DataError(f"{location} is not an ImageFolder listing ({exc})") from None
    root, folders = _meta(table.schema, location)
    try:
        files = packed(table.column("path").combine_chunks())
        labels = table.column("label").to_numpy().astype(np.int32)
    except (pa.ArrowException, KeyError) as exc:
        raise DataError(f"{location} is not an ImageFolder listing ({exc})") from None
    if len(labels) and (labels.min() < 0 or labels.max() >= len(folders)):
        raise DataError(f"{location} is not an ImageFolder listing (a label out of range)")
    del table, data
    release_arrow_memory()  # a listing costs a process what it keeps (PackedNames)
    return ImageFolderListing(root, folders, files, labels)


def write_listings(
    specs: Iterable[DatasetSpec],
    directory: str | Location,
    *,
    listed: Mapping[str, ImageFolderListing] | None = None,
) -> dict[str, str]:
    """``{root: listing URI}`` of every ImageFolder root among ``specs``, stored in ``directory``:
    a listing already there is kept (a resumed search), one in ``listed`` (the preflight's) is
    written, any other root is walked now."""
    directory = Location.parse(directory)
    out: dict[str, str] = {}
    for spec in specs:
        key = listing_key(spec)
        if key is None or key in out:
            continue
        target = directory.join(listing_name(key))
        if not target.is_file():
            listing = (listed or {}).get(key) or list_image_folder(key)
            write_listing(listing, target)
        out[key] = target.uri
    return out


def stored_listings(specs: Iterable[DatasetSpec], directory: str | Location) -> dict[str, str]:
    """``{root: listing URI}`` of the listings ``write_listings`` stored in ``directory`` for the
    ImageFolder roots among ``specs`` (a root without one is left out: opening it walks)."""
    directory = Location.parse(directory)
    out: dict[str, str] = {}
    for spec in specs:
        key = listing_key(spec)
        if key is not None and key not in out and directory.join(listing_name(key)).is_file():
            out[key] = directory.join(listing_name(key)).uri
    return out


def _meta(schema: pa.Schema, where) -> tuple[str, tuple[str, ...]]:
    try:
        meta = json.loads((schema.metadata or {})[LISTING_KEY])
        if meta.get("format") != LISTING_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {LISTING_FORMAT}")
        return str(meta["root"]), tuple(str(f) for f in meta["folders"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"{where} is not an ImageFolder listing ({exc})") from None


def listing_folders(spec: DatasetSpec, listings: Listings | None) -> tuple[str, ...] | None:
    """The class folders of ``spec``'s root as its listing in ``listings`` has them (a stored
    listing's footer only is read), else ``None``."""
    key = listing_key(spec)
    if key is None or not listings or key not in listings:
        return None
    listing = listings[key]
    if isinstance(listing, ImageFolderListing):
        root, folders = listing.root, listing.folders
    else:
        location = Location.parse(listing)
        try:
            with location.filesystem.open_input_file(location.fs_path) as f:
                schema = pq.read_schema(f)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"cannot read the listing {location}: {exc}") from None
        root, folders = _meta(schema, location)
    if root != key:
        raise DataError(f"{spec}: the listing given is of {root}, not of {key}")
    return folders


def listing_of(spec: DatasetSpec, listings: Listings | None) -> ImageFolderListing | None:
    """The listing of ``spec``'s root in ``listings`` (read when it is a location), else ``None``.
    A listing stored for another root is a ``DataError``."""
    key = listing_key(spec)
    if key is None or not listings or key not in listings:
        return None
    listing = listings[key]
    if not isinstance(listing, ImageFolderListing):
        listing = read_listing(listing)
    if listing.root != key:
        raise DataError(f"{spec}: the listing given is of {listing.root}, not of {key}")
    return listing
