"""``raymmft convert-parquet ROOT OUT``: an ImageFolder as Parquet shards for ``parquet:`` datasets.

The shards hold the image files' bytes unchanged, an int64 label and the source path, with the class
names in the schema metadata; ``OUT`` may be a local folder or an object-store URI (``s3://...``).
Rows are shuffled (seed 0) unless ``--keep-order``: training reads row groups in a random order and
mixes rows within a group, so a group of one class would make batches of one class.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from raymmft.errors import ConfigError

ROWS_PER_GROUP = 100  # raymmft.data.parquet.ROWS_PER_GROUP, without importing pyarrow for --help


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="ImageFolder root: ROOT/<class folder>/<images>")
    parser.add_argument("out", help="output folder or URI (s3://, gs://): new or empty")
    parser.add_argument(
        "--rows-per-shard", type=int, default=1000, help="rows per Parquet file (default 1000)"
    )
    parser.add_argument(
        "--rows-per-group",
        type=int,
        default=ROWS_PER_GROUP,
        help=f"rows per row group, the unit a dataset reads and caches (default {ROWS_PER_GROUP})",
    )
    parser.add_argument(
        "--classnames-file", default=None, help="class names, one per line, in class-folder order"
    )
    order = parser.add_mutually_exclusive_group()
    order.add_argument(
        "--shuffle-seed",
        type=int,
        default=0,
        help="shuffle rows across shards with this seed (default 0)",
    )
    order.add_argument(
        "--keep-order",
        action="store_true",
        help="keep folder order (class after class): for evaluation sets only",
    )


def run(args: argparse.Namespace) -> int:
    from raymmft.storage import check_output

    out = check_output(args.out, "OUT", directory=True, empty=True)
    if out.is_local:
        root, target = Path(args.root).resolve(), out.local_path.resolve()
        if target == root or root in target.parents:
            raise ConfigError(
                f"OUT {args.out} is inside ROOT {args.root}: the shards would become a class "
                "folder of the ImageFolder; write them elsewhere"
            )
    from raymmft.data.parquet import (
        imagefolder_to_parquet,
        open_parquet_dataset,
        read_parquet_classnames,
    )

    shards = imagefolder_to_parquet(
        args.root,
        args.out,
        rows_per_shard=args.rows_per_shard,
        rows_per_group=args.rows_per_group,
        classnames_file=args.classnames_file,
        shuffle_seed=None if args.keep_order else args.shuffle_seed,
    )
    rows = open_parquet_dataset(args.out).count_rows()
    classes = len(read_parquet_classnames(args.out))
    print(f"wrote {rows} images of {classes} classes in {len(shards)} shards to {args.out}")
    return 0
