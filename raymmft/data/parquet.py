"""``parquet:URI``: image datasets as Parquet shards, local or on object storage.

Shard layout (written by ``imagefolder_to_parquet``): columns ``image`` (the encoded file bytes,
PNG/JPEG exactly as on disk), ``label`` (int64) and ``path`` (the source file, relative to the
ImageFolder root); the class names, in label order, are JSON in the schema metadata under
``raymmft.classnames``.

Two readers: the core reader (pyarrow; local paths or any URI ``pyarrow.fs.FileSystem.from_uri``
understands, e.g. ``s3://``, ``gs://``) loads the encoded bytes into memory and feeds the same
``Dataset``/``DataLoader`` path as every other kind; ``read_parquet_ray`` streams shards through Ray
Data for large sets, with ``decode_batch`` turning a batch into tensors on the workers. Ray is imported
only inside ``read_parquet_ray``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from raymmft.data.dataset import EncodedImageDataset, decode_image, image_problem
from raymmft.data.imagefolder import find_unreadable, read_classnames_file, scan_image_folder
from raymmft.data.selection import select_samples
from raymmft.data.spec import DatasetSpec
from raymmft.errors import DataError, StorageError
from raymmft.storage import Location

CLASSNAMES_KEY = b"raymmft.classnames"
SHARD_NAME = "part-{:05d}.parquet"


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
    classnames_file: str | None = None,
    shuffle_seed: int | None = None,
) -> list[str]:
    """Write an ImageFolder as Parquet shards of at most ``rows_per_shard`` rows; return their paths.

    Images are stored as the bytes on disk (no re-encoding, so decoding gives identical pixels).
    Rows keep folder order unless ``shuffle_seed`` is set; shuffled shards suit streaming readers,
    which see one shard at a time. ``out_dir`` may be a URI; it must not already hold shards.
    """
    if rows_per_shard < 1:
        raise DataError(f"rows_per_shard must be at least 1, got {rows_per_shard}")
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
        pq.write_table(table, shard_path, filesystem=fs)
        written.append(shard_path)
    return written


def open_parquet_dataset(location: str) -> pads.Dataset:
    fs, path = resolve_location(location)
    try:
        return pads.dataset(path, format="parquet", filesystem=fs)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read parquet {location}: {exc}") from None


def read_parquet_classnames(location: str, *, classnames_file: str | None = None) -> list[str]:
    """Class names of a Parquet dataset: ``classnames_file`` if given, else the schema metadata.
    Reads only the schema; the Ray Data path uses it to build the text prompts."""
    location = strip_scheme(location)
    schema = open_parquet_dataset(location).schema
    stored = (schema.metadata or {}).get(CLASSNAMES_KEY)
    stored_names = json.loads(stored) if stored is not None else None
    if classnames_file is not None:
        names = read_classnames_file(classnames_file)
        if stored_names is not None and len(names) != len(stored_names):
            raise DataError(
                f"classnames file {classnames_file} has {len(names)} names but parquet "
                f"{location} has {len(stored_names)} classes"
            )
        return names
    if stored_names is None:
        raise DataError(
            f"parquet {location}: no class names in the schema metadata "
            f"({CLASSNAMES_KEY.decode()}); set classnames_file"
        )
    return stored_names


def check_columns(columns: Sequence[str], location: str, image_column: str, label_column: str):
    """Raise DataError if the image or label column is missing."""
    for role, column in (("image", image_column), ("label", label_column)):
        if column not in columns:
            raise DataError(
                f"parquet {location}: {role} column {column!r} missing "
                f"(columns: {', '.join(columns)})"
            )


def open_parquet(
    spec: DatasetSpec,
    transform: Callable | None,
    *,
    id_classnames: Sequence[str] | None = None,
    check: bool = False,
) -> EncodedImageDataset:
    """The images of a ``parquet:`` spec, read with pyarrow into memory (encoded), then selected;
    with ``check`` every image's header is read now (see ``imagefolder.open_image_folder``)."""
    location = spec.location
    dataset = open_parquet_dataset(location)
    check_columns(dataset.schema.names, location, spec.image_column, spec.label_column)
    label_type = dataset.schema.field(spec.label_column).type
    if not pa.types.is_integer(label_type):
        raise DataError(
            f"parquet {location}: label column {spec.label_column!r} has type {label_type}; "
            f"expected integers"
        )
    classnames = read_parquet_classnames(location, classnames_file=spec.classnames_file)
    columns = [spec.label_column] + (["path"] if "path" in dataset.schema.names else [])
    table = dataset.to_table(columns=columns)
    labels_column = table.column(spec.label_column)
    if labels_column.null_count:
        raise DataError(f"parquet {location}: label column {spec.label_column!r} has nulls")
    source_labels = labels_column.to_numpy().astype(np.int64)
    out_of_range = source_labels[(source_labels < 0) | (source_labels >= len(classnames))]
    if len(out_of_range):
        raise DataError(
            f"parquet {location}: label {out_of_range[0]} out of range for {len(classnames)} "
            f"class names"
        )
    indices, labels, selected = select_samples(
        spec, source_labels, classnames, id_classnames=id_classnames
    )
    # Reads only the row groups that hold selected rows.
    images = dataset.take(pa.array(indices), columns=[spec.image_column])
    encoded = images.column(spec.image_column).to_pylist()
    paths = table.column("path").take(pa.array(indices)).to_pylist() if "path" in columns else None
    ids = [
        f"{location}#{row}" + (f" ({paths[k]})" if paths else "") for k, row in enumerate(indices)
    ]
    if not check:
        return EncodedImageDataset(
            encoded, labels, selected, ids, transform, skip_corrupt=spec.skip_corrupt
        )
    skipped, keep = [], []
    for k, data in enumerate(encoded):
        why = image_problem(data, full_decode=spec.skip_corrupt)
        if why is None:
            keep.append(k)
        elif spec.skip_corrupt:
            skipped.append(ids[k])
        else:
            raise DataError(f"cannot read image {ids[k]}: {why}")
    if not keep:
        raise DataError(f"{spec}: every selected image is unreadable")
    return EncodedImageDataset(
        [encoded[k] for k in keep],
        labels[keep],
        selected,
        [ids[k] for k in keep],
        transform,
        skipped=skipped,
    )


# --- Ray Data --------------------------------------------------------------------------------------


def read_parquet_ray(uri: str, *, columns: Sequence[str] = ("image", "label"), **read_kwargs):
    """``ray.data.read_parquet`` over the shards (``parquet:`` prefix optional); each Ray Train
    worker then iterates its ``get_dataset_shard`` and maps batches through ``decode_batch``."""
    import ray.data

    return ray.data.read_parquet(strip_scheme(uri), **read_kwargs).select_columns(list(columns))


def decode_batch(
    batch: dict,
    transform: Callable,
    *,
    image_column: str = "image",
    label_column: str = "label",
) -> tuple[torch.Tensor, torch.Tensor]:
    """A Ray Data batch (column -> array of encoded images / labels) -> ``(images [B, 3, H, W],
    labels [B] int64)``, each image decoded to RGB and passed through ``transform``."""
    check_columns(list(batch), "batch", image_column, label_column)
    images = [
        transform(decode_image(bytes(data), f"in batch row {k}"))
        for k, data in enumerate(batch[image_column])
    ]
    labels = torch.tensor(np.asarray(batch[label_column], dtype=np.int64))
    return torch.stack(images), labels
