"""``raymmft report EXPERIMENT``: trials.parquet, the trial table with the Pareto front,
pareto.png and curves.png for a search (finished, running or interrupted)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "experiment",
        help="the experiment directory: <storage>/<name>, a local path or s3:// / gs:// URI",
    )
    p.add_argument("--out", help="where to write the report (default: <experiment>/report)")
    p.add_argument(
        "--top", type=int, default=5, help="trials drawn in curves.png, best score first"
    )


def run(args: argparse.Namespace) -> int:
    from raymmft.results.report import write_report
    from raymmft.storage import check_output

    if args.out is not None:
        check_output(args.out, "--out", directory=True)
    paths = write_report(args.experiment, args.out, top=args.top)
    print(paths.table)
    print()
    print(paths.describe())
    return 0
