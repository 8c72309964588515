"""``parquet:URI``: image datasets as Parquet shards, local or on object storage.

Shard layout (written by ``imagefolder_to_parquet``): columns ``image`` (the encoded file bytes,
PNG/JPEG exactly as on disk), ``label`` (int64) and ``path`` (the source file, relative to the
ImageFolder root); the class names, in label order, are JSON in the schema metadata under
``raymmft.classnames``.

Opening reads each file's footer and its label column only (pyarrow; local paths or any URI
``pyarrow.fs.FileSystem.from_uri`` understands, e.g. ``s3://``, ``gs://``). The dataset keeps a
compact index (the source row and the label of each selected sample, 16 bytes a row) and reads the
image column one row group at a time when a sample is asked for, keeping the last
``CACHED_GROUPS`` row groups per process: its memory is bounded by the largest row groups, not by
the dataset. ``build_loader`` orders an epoch by row group (``RowGroupSampler``), so an epoch reads
each row group about once.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from raymmft.data.dataset import (
    IdsByIndex,
    LabeledImageDataset,
    decode_image,
    image_problem,
    release_arrow_memory,
)
from raymmft.data.imagefolder import find_unreadable, read_classnames_file, scan_image_folder
from raymmft.data.selection import select_samples
from raymmft.data.spec import DatasetSpec
from raymmft.errors import DataError, StorageError
from raymmft.storage import Location

CLASSNAMES_KEY = b"raymmft.classnames"
SHARD_NAME = "part-{:05d}.parquet"
# Rows per row group the converter writes: a group is the unit of reading and caching, so a
# small one bounds memory (~100 ImageNet JPEGs: ~11 MB) and keeps each group within few batches.
ROWS_PER_GROUP = 100
# Row groups kept per process: an epoch is read group after group (``RowGroupSampler``, and an
# evaluation's shard in dataset order), so a batch that straddles two reads one, then the other.
CACHED_GROUPS = 1
OPEN_FILES = 4  # Parquet files kept open per process
READ_BUFFER = 2**20  # bytes read at a time from a file
CHECK_GROUPS = 16  # row groups the preflight reads, spread over the dataset (``check_all``: all)


def strip_scheme(uri: str) -> str:
    """``parquet:s3://b/p`` -> ``s3://b/p``; a bare location is returned unchanged."""
    return uri[len("parquet:") :] if uri.startswith("parquet:") else uri


def resolve_location(location: str, *, must_exist: bool = True) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of a local path or a URI (``s3://``, ``gs://``, ``file://`` ...),
    opened as every raymmft location is (``raymmft.storage``)."""
    try:
        resolved = Location.parse(location)
        missing = must_exist and resolved.is_local and not resolved.exists()
        if missing:
            raise DataError(f"dataset path does not exist: {resolved.local_path}")
        return resolved.filesystem, resolved.fs_path
    except StorageError as exc:
        raise DataError(f"cannot open parquet location {location}: {exc}") from None


def classnames_metadata(classnames: Sequence[str]) -> dict[bytes, bytes]:
    return {CLASSNAMES_KEY: json.dumps(list(classnames)).encode()}


def shard_schema(classnames: Sequence[str]) -> pa.Schema:
    fields = [("image", pa.binary()), ("label", pa.int64()), ("path", pa.string())]
    return pa.schema(fields, metadata=classnames_metadata(classnames))


def imagefolder_to_parquet(
    root: str | Path,
    out_dir: str,
    *,
    rows_per_shard: int,
    rows_per_group: int = ROWS_PER_GROUP,
    classnames_file: str | None = None,
    shuffle_seed: int | None = None,
) -> list[str]:
    """Write an ImageFolder as Parquet shards of at most ``rows_per_shard`` rows, in row groups of
    at most ``rows_per_group`` rows; return their paths.

    Images are stored as the bytes on disk (no re-encoding, so decoding gives identical pixels).
    Rows keep folder order unless ``shuffle_seed`` is set. Training reads row groups in a random
    order and shuffles rows only within a group, so a training set should be written shuffled
    (the command does by default): a group of one class would make batches of one class.
    ``out_dir`` may be a URI; it must not already hold shards.
    """
    for name, value in (("rows_per_shard", rows_per_shard), ("rows_per_group", rows_per_group)):
        if value < 1:
            raise DataError(f"{name} must be at least 1, got {value}")
    scan = scan_image_folder(root, classnames_file=classnames_file)
    unreadable = find_unreadable(scan.paths, full_decode=False)
    if unreadable:
        path, why = unreadable[0]
        raise DataError(f"cannot read image {path}: {why}")
    order = np.arange(len(scan.paths))
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(order))
    fs, out_path = resolve_location(out_dir, must_exist=False)
    existing = fs.get_file_info(pafs.FileSelector(out_path, allow_not_found=True))
    if any(info.path.endswith(".parquet") for info in existing):
        raise DataError(f"output folder already holds parquet shards: {out_dir}")
    fs.create_dir(out_path, recursive=True)
    schema = shard_schema(scan.classnames)
    written = []
    for shard, start in enumerate(range(0, len(order), rows_per_shard)):
        rows = order[start : start + rows_per_shard]
        table = pa.table(
            {
                "image": [scan.paths[i].read_bytes() for i in rows],
                "label": scan.labels[rows],
                "path": [scan.paths[i].relative_to(scan.root).as_posix() for i in rows],
            },
            schema=schema,
        )
        shard_path = f"{out_path.rstrip('/')}/{SHARD_NAME.format(shard)}"
        pq.write_table(
            table,
            shard_path,
            filesystem=fs,
            row_group_size=rows_per_group,
            # encoded images neither repeat nor compress: plain pages read in ~2x a group's bytes
            # (a dictionary page, or a compressed one, costs twice that again)
            use_dictionary=["label"],
            compression={"image": "none", "label": "snappy", "path": "snappy"},
        )
        written.append(shard_path)
    return written


def open_parquet_dataset(location: str) -> pads.Dataset:
    fs, path = resolve_location(location)
    try:
        return pads.dataset(path, format="parquet", filesystem=fs)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read parquet {location}: {exc}") from None


def parse_classnames(stored: bytes | None, where: str) -> list[str] | None:
    """The class names in a schema's metadata (``None`` when there are none): a JSON list of
    distinct strings, or a ``DataError`` naming ``where``."""
    if stored is None:
        return None
    key = CLASSNAMES_KEY.decode()
    try:
        names = json.loads(stored)
    except ValueError:
        raise DataError(
            f"parquet {where}: the class names in the schema metadata ({key}) are not JSON; "
            "expected a JSON list of strings"
        ) from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        got = type(names).__name__ if not isinstance(names, list) else "a list with non-strings"
        raise DataError(
            f"parquet {where}: the class names in the schema metadata ({key}) are {got}; "
            "expected a JSON list of strings"
        )
    first: dict[str, int] = {}
    for k, name in enumerate(names):
        if name in first:
            raise DataError(
                f"parquet {where}: class name {name!r} is listed twice in the schema metadata "
                f"({key}, positions {first[name]} and {k})"
            )
        first[name] = k
    return names


def classnames_of(
    schema: pa.Schema, where: str, *, classnames_file: str | None = None
) -> list[str]:
    """Class names of a Parquet dataset: ``classnames_file`` if given, else the schema metadata
    (the stored names are then only compared by count, when they are well formed)."""
    stored = (schema.metadata or {}).get(CLASSNAMES_KEY)
    if classnames_file is not None:
        names = read_classnames_file(classnames_file)
        try:
            stored_names = parse_classnames(stored, where)
        except DataError:
            stored_names = None  # overridden by the file
        if stored_names is not None and len(names) != len(stored_names):
            raise DataError(
                f"classnames file {classnames_file} has {len(names)} names but parquet "
                f"{where} has {len(stored_names)} classes"
            )
        return names
    stored_names = parse_classnames(stored, where)
    if stored_names is None:
        raise DataError(
            f"parquet {where}: no class names in the schema metadata "
            f"({CLASSNAMES_KEY.decode()}); set classnames_file"
        )
    return stored_names


def read_parquet_classnames(location: str, *, classnames_file: str | None = None) -> list[str]:
    """Class names of a Parquet dataset (see ``classnames_of``); reads only the schema."""
    location = strip_scheme(location)
    schema = open_parquet_dataset(location).schema
    return classnames_of(schema, location, classnames_file=classnames_file)


def check_columns(schema: pa.Schema, where: str, image_column: str, label_column: str) -> None:
    """Raise DataError if the image or label column is missing or of another type: the image
    column holds encoded bytes (a string column would be paths or text), the label integers."""
    for role, column in (("image", image_column), ("label", label_column)):
        if column not in schema.names:
            raise DataError(
                f"parquet {where}: {role} column {column!r} missing "
                f"(columns: {', '.join(schema.names)})"
            )
    image_type = schema.field(image_column).type
    if not (pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type)):
        raise DataError(
            f"parquet {where}: image column {image_column!r} has type {image_type}; "
            "expected binary (the encoded image bytes)"
        )
    label_type = schema.field(label_column).type
    if not pa.types.is_integer(label_type):
        raise DataError(
            f"parquet {where}: label column {label_column!r} has type {label_type}; "
            f"expected integers"
        )


@dataclass(frozen=True)
class RowGroups:
    """Where the rows of a Parquet dataset lie: the files, and per row group (in file order) its
    file, its index in the file and its first source row (``starts`` has one more entry: the
    row count). Source rows number the dataset's rows in file order."""

    root: str  # the location's path on its filesystem
    files: list[str]
    file: np.ndarray  # int32 [G]
    index: np.ndarray  # int32 [G]
    starts: np.ndarray  # int64 [G + 1]

    def name(self, location: str, f: int) -> str:
        return file_name(location, self.root, self.files[f])

    def group_of(self, rows: np.ndarray) -> np.ndarray:
        """The row group of each source row."""
        return np.searchsorted(self.starts, rows, side="right").astype(np.int32) - 1


def leaf_index(metadata: pq.FileMetaData, column: str) -> int | None:
    for j in range(metadata.num_columns):
        if metadata.schema.column(j).path == column:
            return j
    return None


def null_rows(metadata: pq.FileMetaData, column: str) -> list[int] | None:
    """Row groups whose statistics count a null in ``column``; ``None`` without statistics."""
    j = leaf_index(metadata, column)
    if j is None:
        return None
    groups = []
    for g in range(metadata.num_row_groups):
        stats = metadata.row_group(g).column(j).statistics
        if stats is None or not stats.has_null_count:
            return None
        if stats.null_count:
            groups.append(g)
    return groups


def file_name(location: str, root: str, path: str) -> str:
    """A file of a dataset as the user would name it: the location and the path below it."""
    if path == root.rstrip("/"):
        return location
    below = path[len(root) :].lstrip("/") if path.startswith(root) else path
    return f"{location.rstrip('/')}/{below}"


class ParquetImageDataset(LabeledImageDataset):
    """Images read from Parquet by row group, on access. Holds the source row and the label of each
    sample (numpy, 16 bytes a row); files are opened lazily in each process (a DataLoader worker,
    a Ray worker), so the dataset pickles without them."""

    def __init__(
        self,
        location: str,
        groups: RowGroups,
        image_column: str,
        rows: np.ndarray,
        labels,
        classnames,
        transform=None,
        *,
        has_paths: bool = False,
        skipped=(),
        skip_corrupt=False,
    ):
        self.location, self.groups, self.image_column = location, groups, image_column
        self.rows = np.asarray(rows, dtype=np.int64)
        self.has_paths = has_paths
        super().__init__(
            labels,
            classnames,
            IdsByIndex(len(self.rows), self.sample_id),
            transform,
            skipped=skipped,
            skip_corrupt=skip_corrupt,
        )
        self.group_reads = 0  # row groups read in this process (a test and a benchmark count)
        self._process: int | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_process"] = None  # open files and cached groups stay in their process
        for key in ("_fs", "_files", "_cache"):
            state.pop(key, None)
        return state

    def _local(self):
        """This process's filesystem, open files and cached groups (a forked DataLoader worker
        starts its own: an object-store client is not safe across a fork)."""
        if self._process != os.getpid():
            self._fs, _ = resolve_location(self.location)
            self._files: OrderedDict[int, pq.ParquetFile] = OrderedDict()
            self._cache: OrderedDict[tuple[int, str], pa.ChunkedArray] = OrderedDict()
            self._process = os.getpid()
        return self._fs, self._files, self._cache

    def row_groups(self) -> np.ndarray:
        """The row group of each sample (``RowGroupSampler`` orders an epoch by it)."""
        return self.groups.group_of(self.rows)

    def _parquet_file(self, f: int) -> pq.ParquetFile:
        fs, files, _ = self._local()
        if f in files:
            files.move_to_end(f)
            return files[f]
        # pre_buffer would keep each file's last row group in its cache, beside ours; a buffered
        # stream reads a column chunk page by page, not whole before decoding
        opened = pq.ParquetFile(
            fs.open_input_file(self.groups.files[f]), pre_buffer=False, buffer_size=READ_BUFFER
        )
        files[f] = opened
        if len(files) > OPEN_FILES:
            files.popitem(last=False)[1].close()
        return opened

    def read_group(self, g: int, column: str) -> pa.ChunkedArray:
        """One column of row group ``g`` (cached: the last ``CACHED_GROUPS`` groups read)."""
        _, _, cache = self._local()
        key = (g, column)
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        while len(cache) >= CACHED_GROUPS:  # room first: a read holds its own group, not one more
            cache.popitem(last=False)
        source = self._parquet_file(int(self.groups.file[g]))
        try:
            table = source.read_row_group(int(self.groups.index[g]), columns=[column])
        except (pa.ArrowException, OSError) as exc:
            name = self.groups.name(self.location, int(self.groups.file[g]))
            raise DataError(f"cannot read parquet {name}: {exc}") from None
        cache[key] = table.column(0)
        self.group_reads += 1
        # Arrow's allocator keeps the pages of the dropped group and of the read's buffers: in a
        # loader process they were more than the group itself
        release_arrow_memory()
        return cache[key]

    def _cell(self, index: int, column: str):
        row = int(self.rows[index])
        g = int(self.groups.group_of(np.asarray([row]))[0])
        return self.read_group(g, column)[row - int(self.groups.starts[g])].as_py()

    def sample_id(self, index: int) -> str:
        """``LOCATION#ROW`` (the source row), with the source path when the shards hold one."""
        base = f"{self.location}#{int(self.rows[index])}"
        return f"{base} ({self._cell(index, 'path')})" if self.has_paths else base

    def load_image(self, index: int) -> Image.Image:
        # the id (which may read the path column) is formed only for a message
        return decode_image(self._cell(index, self.image_column), lambda: self.sample_id(index))


def read_index(location: str, spec: DatasetSpec) -> tuple[RowGroups, np.ndarray, pa.Schema, list]:
    """Every file's footer and label column: the row groups, the label of every source row, the
    schema and, per file, the row groups with a null image (``None``: no statistics to tell).
    Each file's schema is checked here, named."""
    fs, root = resolve_location(location)
    try:
        files = sorted(pads.dataset(root, format="parquet", filesystem=fs).files)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read parquet {location}: {exc}") from None
    if not files:
        raise DataError(f"parquet {location}: no .parquet files")
    group_file, group_index, counts, labels, nulls = [], [], [], [], []
    schema = None
    for f, path in enumerate(files):
        where = file_name(location, root, path)
        try:
            with fs.open_input_file(path) as handle:
                source = pq.ParquetFile(handle)
                file_schema = source.schema_arrow
                check_columns(file_schema, where, spec.image_column, spec.label_column)
                column = source.read(columns=[spec.label_column]).column(0)
                metadata = source.metadata
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"cannot read parquet {where}: {exc}") from None
        if schema is None:
            schema = file_schema
        elif (file_schema.metadata or {}).get(CLASSNAMES_KEY) != (schema.metadata or {}).get(
            CLASSNAMES_KEY
        ):
            raise DataError(
                f"parquet {where}: the class names in its schema metadata differ from "
                f"{file_name(location, root, files[0])}'s; expected the same in every file"
            )
        if column.null_count:
            raise DataError(f"parquet {where}: label column {spec.label_column!r} has nulls")
        labels.append(column.to_numpy().astype(np.int64))
        nulls.append(null_rows(metadata, spec.image_column))
        for g in range(metadata.num_row_groups):
            group_file.append(f)
            group_index.append(g)
            counts.append(metadata.row_group(g).num_rows)
    starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    release_arrow_memory()  # the label columns, decoded and dropped
    groups = RowGroups(
        root,
        files,
        np.asarray(group_file, dtype=np.int32),
        np.asarray(group_index, dtype=np.int32),
        starts.astype(np.int64),
    )
    return groups, np.concatenate(labels), schema, nulls


def open_parquet(
    spec: DatasetSpec,
    transform: Callable | None,
    *,
    id_classnames: Sequence[str] | None = None,
    check: bool = False,
    check_all: bool = False,
) -> ParquetImageDataset:
    """The images of a ``parquet:`` spec, selected; images are read by row group when used.

    Opening reads every file's footer and label column, checks the columns' types, the class
    names and (from the row-group statistics) that no selected image is null. With ``check``
    (the driver's preflight) the images of ``CHECK_GROUPS`` row groups spread over the selection
    are read now; with ``check_all``, or ``skip_corrupt`` (then fully decoded, and unreadable ones
    left out: ``dataset.skipped``), every selected image is.
    """
    location = spec.location
    groups, source_labels, schema, nulls = read_index(location, spec)
    classnames = classnames_of(schema, location, classnames_file=spec.classnames_file)
    out_of_range = source_labels[(source_labels < 0) | (source_labels >= len(classnames))]
    if len(out_of_range):
        raise DataError(
            f"parquet {location}: label {out_of_range[0]} out of range for {len(classnames)} "
            f"class names"
        )
    rows, labels, selected = select_samples(
        spec, source_labels, classnames, id_classnames=id_classnames
    )
    del source_labels
    dataset = ParquetImageDataset(
        location,
        groups,
        spec.image_column,
        rows,
        labels,
        selected,
        transform,
        has_paths="path" in schema.names,
        skip_corrupt=spec.skip_corrupt,
    )
    if not spec.skip_corrupt:
        refuse_null_images(dataset, nulls)
    if not check:
        return dataset
    return checked(dataset, spec, every=check_all or spec.skip_corrupt)


def refuse_null_images(dataset: ParquetImageDataset, nulls: list) -> None:
    """A null among the selected images, found from the row-group statistics (only the groups
    that have one are read); files without statistics are left to the read."""
    groups = dataset.groups
    flagged = [
        g
        for g in range(len(groups.file))
        if nulls[groups.file[g]] is not None and groups.index[g] in nulls[groups.file[g]]
    ]
    of_sample = dataset.row_groups()
    for g in flagged:
        members = np.flatnonzero(of_sample == g)
        if not len(members):
            continue
        column = dataset.read_group(g, dataset.image_column)
        is_null = pc.is_null(column).to_numpy(zero_copy_only=False)
        bad = members[is_null[dataset.rows[members] - groups.starts[g]]]
        if len(bad):
            raise DataError(
                f"cannot read image {dataset.sample_id(int(bad[0]))}: no image bytes (null)"
            )


def checked(dataset: ParquetImageDataset, spec: DatasetSpec, *, every: bool):
    """Read the images of a sample of row groups (``every``: all), one group at a time; an
    unreadable one fails, named, or with ``skip_corrupt`` is left out of the returned dataset."""
    of_sample = dataset.row_groups()
    present = np.unique(of_sample)
    if not every and len(present) > CHECK_GROUPS:
        present = present[np.unique(np.linspace(0, len(present) - 1, CHECK_GROUPS).astype(int))]
    keep = np.ones(len(dataset), dtype=bool)
    skipped = []
    for g in present:
        column = dataset.read_group(int(g), dataset.image_column)
        start = dataset.groups.starts[g]
        for k in np.flatnonzero(of_sample == g):
            data = column[int(dataset.rows[k] - start)].as_py()
            why = image_problem(data, full_decode=spec.skip_corrupt)
            if why is None:
                continue
            if not dataset.skip_corrupt:
                raise DataError(f"cannot read image {dataset.sample_id(int(k))}: {why}")
            keep[k] = False
            skipped.append(dataset.sample_id(int(k)))
    if keep.all():
        return dataset
    if not keep.any():
        raise DataError(f"{spec}: every selected image is unreadable")
    kept = ParquetImageDataset(
        dataset.location,
        dataset.groups,
        dataset.image_column,
        dataset.rows[keep],
        dataset.labels[keep],
        dataset.classnames,
        dataset.transform,
        has_paths=dataset.has_paths,
        skipped=skipped,
        skip_corrupt=spec.skip_corrupt,
    )
    kept.group_reads = dataset.group_reads
    return kept
