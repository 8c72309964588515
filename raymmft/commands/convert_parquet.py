"""``raymmft convert-parquet ROOT OUT``: an ImageFolder as Parquet shards for ``parquet:`` datasets.

The shards hold the image files' bytes unchanged, an int64 label and the source path, with the class
names in the schema metadata; ``OUT`` may be a local folder or an object-store URI (``s3://...``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from raymmft.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="ImageFolder root: ROOT/<class folder>/<images>")
    parser.add_argument("out", help="output folder or URI (s3://, gs://): new or empty")
    parser.add_argument(
        "--rows-per-shard", type=int, default=1000, help="rows per Parquet file (default 1000)"
    )
    parser.add_argument(
        "--classnames-file", default=None, help="class names, one per line, in class-folder order"
    )
    parser.add_argument(
        "--shuffle-seed",
        type=int,
        default=None,
        help="shuffle rows across shards with this seed (better for streaming); default: folder order",
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
        classnames_file=args.classnames_file,
        shuffle_seed=args.shuffle_seed,
    )
    rows = open_parquet_dataset(args.out).count_rows()
    classes = len(read_parquet_classnames(args.out))
    print(f"wrote {rows} images of {classes} classes in {len(shards)} shards to {args.out}")
    return 0
